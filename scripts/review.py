"""Review a study and the application's results in the OHIF Viewer, on the local machine.

    .venv/bin/python scripts/review.py DICOM_FOLDER [RESULT_FOLDER ...] [--port 8080]
    bash scripts/review.sh DICOM_FOLDER RESULT_FOLDER          (the same, with set-up)

1. fetches the built OHIF Viewer (npm package @ohif/app, version OHIF_VERSION) once into
   build/ohif with `npm pack` (the registry's integrity check; nothing is installed);
2. starts Orthanc (Debian package, with its DICOMweb plugin) in a work folder: no DICOM
   listener, HTTP answered for this machine only;
3. stores every DICOM file of the given folders in it (the CT study, its SEG and SR);
4. serves OHIF and Orthanc's DICOMweb from one origin on 127.0.0.1: OHIF's files with a
   generated app-config.js whose data source is /dicom-web (proxied to Orthanc), index.html for
   OHIF's routes (/viewer, /segmentation);
5. prints the viewer address of each study and serves until Ctrl-C.

Load the SEG in the viewer by double-clicking its thumbnail and answering "Yes"
(docs/review.md). tests/test_review_ohif.py drives the same server from headless Chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List

import pydicom

REPO = Path(__file__).resolve().parents[1]
OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PROXIED = ("/dicom-web/", "/wado")

APP_CONFIG = """window.config = {
  routerBasename: null,
  showStudyList: true,
  extensions: [],
  modes: [],
  showLoadingIndicator: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'Orthanc (TAGS review)',
      name: 'orthanc',
      wadoUriRoot: '/wado',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      singlepart: 'bulkdata,video,pdf',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      dicomUploadEnabled: false,
    },
  }],
};
"""


class ReviewError(RuntimeError):
    """A missing tool or a failed step, with what to do about it."""


def ensure_ohif(cache: Path = REPO / "build" / "ohif") -> Path:
    """The OHIF Viewer's built files (``dist/``), fetched once with `npm pack`."""
    dist = cache / f"ohif-app-{OHIF_VERSION}" / "dist"
    if (dist / "index.html").is_file():
        return dist
    if not shutil.which("npm"):
        raise ReviewError("npm is not installed (Debian 12: apt-get install npm); it fetches the OHIF Viewer")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(["npm", "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--silent"], cwd=tmp,
                              capture_output=True, text=True)
        tgz = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tgz:
            raise ReviewError(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {proc.stderr.strip()[-500:]}")
        with tarfile.open(tgz[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/") and (m.isfile() or m.isdir())]
            tar.extractall(tmp, members=members)
        shutil.rmtree(dist.parent, ignore_errors=True)
        dist.parent.mkdir(parents=True)
        (Path(tmp) / "package" / "dist").rename(dist)
    return dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def orthanc(work: Path, http_port: int) -> Iterator[str]:
    """Orthanc with DICOMweb on ``http_port`` (answering this machine only, no DICOM listener),
    storage in ``work``; yields its base URL and stops it afterwards."""
    if not shutil.which("Orthanc") or not ORTHANC_DICOMWEB_PLUGIN.is_file():
        raise ReviewError("Orthanc or its DICOMweb plugin is missing (apt-get install orthanc orthanc-dicomweb)")
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "TAGS-REVIEW", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
        "HttpPort": http_port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    base = f"http://127.0.0.1:{http_port}"
    with open(work / "orthanc.log", "w") as log:
        proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if proc.poll() is not None:
                raise ReviewError(f"Orthanc exited at start; see {work / 'orthanc.log'}")
            try:
                urllib.request.urlopen(base + "/system", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise ReviewError(f"Orthanc did not answer on port {http_port}; see {work / 'orthanc.log'}")
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminates ``proc`` (Orthanc takes a few seconds), killing it if it does not exit."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def store(orthanc_url: str, folders: List[Path]) -> Dict[str, List[str]]:
    """Stores every DICOM file under ``folders`` in Orthanc; returns study UID -> modalities."""
    studies: Dict[str, set] = {}
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue  # the JSON and PNG files beside the results
            req = urllib.request.Request(orthanc_url + "/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
            try:
                urllib.request.urlopen(req, timeout=60).close()
            except urllib.error.HTTPError as e:
                raise ReviewError(f"Orthanc refused {path.name}: HTTP {e.code}") from None
            studies.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.Modality))
    return {uid: sorted(m) for uid, m in studies.items()}


def _handler(dist: Path, orthanc_url: str) -> type:
    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".wasm": "application/wasm", ".js": "text/javascript"}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, format, *args):  # quiet: the browser fetches hundreds of files
            pass

        def end_headers(self):
            # cross-origin isolation lets OHIF use SharedArrayBuffer for volumes
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def do_GET(self):
            if self.path.startswith(PROXIED):
                return self._proxy()
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                return self._send(200, APP_CONFIG.encode(), "text/javascript")
            if path == "/" or not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"  # OHIF's client-side routes
            return super().do_GET()

        def do_POST(self):
            return self._proxy() if self.path.startswith(PROXIED) else self._send(405, b"", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str, headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            keep = ("Accept", "Content-Type", "Host")  # Orthanc writes bulk data URLs for this Host
            req = urllib.request.Request(orthanc_url + self.path, data=body, method=self.command,
                                         headers={k: self.headers[k] for k in keep if self.headers.get(k)})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/octet-stream")
            except urllib.error.HTTPError as e:
                status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "text/plain")
            self._send(status, data, ctype, headers=[("Cross-Origin-Resource-Policy", "same-origin")])

    return Handler


@contextlib.contextmanager
def review_server(folders: List[Path], port: int = 0, work: Path | None = None) -> Iterator[Dict]:
    """Orthanc holding ``folders`` and OHIF on one origin; yields {"url", "studies"} where
    studies maps each study UID to its modalities and its viewer address."""
    dist = ensure_ohif()
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tags-review-")))
        orthanc_url = stack.enter_context(orthanc(Path(work) / "orthanc", free_port()))
        studies = store(orthanc_url, [Path(f) for f in folders])
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(dist, orthanc_url))
        stack.callback(server.server_close)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack.callback(server.shutdown)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield {"url": url, "studies": {uid: {"modalities": mods, "viewer": f"{url}/viewer?StudyInstanceUIDs={uid}"}
                                       for uid, mods in studies.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="DICOM folders: the study and its result folders")
    p.add_argument("--port", type=int, default=8080, help="port of the viewer on 127.0.0.1 (default 8080)")
    a = p.parse_args(argv)
    missing = [str(f) for f in a.folders if not f.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop Orthanc on kill as on Ctrl-C
    try:
        with review_server(a.folders, a.port) as served:
            for uid, s in served["studies"].items():
                print(f"study with {', '.join(s['modalities'])}: {s['viewer']}")
            print("Serving; Ctrl-C stops Orthanc and the viewer.")
            while True:
                time.sleep(3600)
    except ReviewError as e:
        print(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

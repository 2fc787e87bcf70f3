"""PACS round trip, run inside a private network namespace (only loopback) by tests/test_pacs.py.

    unshare --net -- python tests/pacs_flow.py --studies DIR --model MODEL --work DIR

1. Orthanc (apt) starts on 127.0.0.1 in this namespace with a Lua OnStableStudy hook that
   forwards a stable study's CT series by C-STORE to the gateway (AE TAGS).
2. The gateway, a stand-in for the MONAI Deploy Informatics Gateway (pynetdicom SCP), writes
   each received series to its own folder and, when the association is released, queues it
   once (a series already processed is not run again: Orthanc re-forwards a study when the
   results make it stable again).
3. Workers run the application, one process per series and --workers of them at a time with
   one CPU thread each (as a workflow manager runs MAP jobs side by side on a 2-core node):
   `python app -i SERIES -o OUT -m MODEL`, or with --image the MAP container
   (`podman run --network none` with the series mounted read-only at /var/holoscan/input and
   OUT at /var/holoscan/output, its baked-in model, its non-root user). Then they return the
   results: studies with an even index send the SEG by C-STORE and the SR by STOW-RS, odd ones
   the other way round.
4. Every study folder in --studies is sent to Orthanc with dcmtk's storescu, in a row.
5. When every study has a SEG in Orthanc (or a timeout), each SEG is retrieved by WADO-RS and
   compared with the file the application wrote. A JSON report goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from review import stop  # noqa: E402

ORTHANC_HTTP = "http://127.0.0.1:8042"
ORTHANC_DICOM = ("127.0.0.1", 4242, "ORTHANC")
GATEWAY = ("127.0.0.1", 11112, "TAGS")
MAP_UID = 1000  # the MAP image's user (Dockerfile: holoscan, 1000:1000)

LUA = """
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for i, s in pairs(series) do
    if s['MainDicomTags']['Modality'] == 'CT' then
      RestApiPost('/modalities/TAGS/store', s['ID'])
    end
  end
end
"""


def http(method: str, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple:
    req = urllib.request.Request(ORTHANC_HTTP + path, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers, r.read()


def start_orthanc(work: Path) -> subprocess.Popen:
    (work / "db").mkdir(parents=True, exist_ok=True)
    (work / "forward.lua").write_text(LUA)
    config = {
        "Name": "TAGS-TEST", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
        "DicomAet": ORTHANC_DICOM[2], "DicomPort": ORTHANC_DICOM[1], "HttpPort": 8042,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckModalityHost": False,
        "DicomModalities": {"TAGS": [GATEWAY[2], GATEWAY[0], GATEWAY[1]]},
        "LuaScripts": [str(work / "forward.lua")], "StableAge": 2,
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = open(work / "orthanc.log", "w")
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            http("GET", "/system")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"Orthanc did not start; see {work / 'orthanc.log'}")


class Gateway:
    """Receives forwarded series, runs the application once per series in ``workers`` threads,
    returns the results."""

    def __init__(self, work: Path, model: Path, app_args: list, workers: int, image: str | None = None,
                 engine: tuple = ()):
        self.work, self.model, self.app_args = work, model, app_args
        self.image, self.engine = image, list(engine)
        self.app_seconds: dict = {}  # study uid -> wall time of its application run
        self.jobs: queue.Queue = queue.Queue()
        self.received: dict = {}  # association id -> series folder
        self.seen: set = set()
        self.duplicates_skipped = 0
        self.results: dict = {}  # study uid -> {"seg": path, "sr": path, "returned_by": ...}
        self.errors: list = []
        self.index: dict = {}  # study uid -> send order
        self.running = self.most_running = 0  # application processes now / at most at once
        self.app_runs: dict = {}  # study uid -> application runs started
        self.lock = threading.Lock()
        ae = AE(ae_title=GATEWAY[2])
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server((GATEWAY[0], GATEWAY[1]), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self.on_store), (evt.EVT_RELEASED, self.on_release)])
        for _ in range(workers):
            threading.Thread(target=self.worker, daemon=True).start()

    def on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        folder = self.work / "incoming" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        self.received.setdefault(id(event.assoc), set()).add(folder)
        return 0x0000

    def on_release(self, event):
        for folder in self.received.pop(id(event.assoc), set()):
            if folder.name in self.seen:
                self.duplicates_skipped += 1
                continue
            self.seen.add(folder.name)
            self.jobs.put(folder)

    def worker(self):
        while True:
            folder = self.jobs.get()
            try:
                self.run_job(folder)
            except Exception as e:  # a crash ends the flow at once with the reason (main() watches errors)
                self.errors.append(f"{folder.parent.name}: gateway worker crashed: {e!r}")

    def run_job(self, folder: Path):
        study = folder.parent.name
        out = self.work / "results" / folder.name
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.app_runs[study] = self.app_runs.get(study, 0) + 1
        t0 = time.perf_counter()
        proc = subprocess.run(self.app_command(folder, out), capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        with self.lock:
            self.running -= 1
            self.app_seconds[study] = round(time.perf_counter() - t0, 2)
        if proc.returncode != 0:
            self.errors.append(f"{study}: app failed: {proc.stderr.strip().splitlines()[-1:]}")
            return
        seg, sr = next(out.glob("SEG_*.dcm")), next(out.glob("SR_*.dcm"))
        even = self.index.get(study, 0) % 2 == 0
        try:
            self.c_store(seg if even else sr)
            self.stow(sr if even else seg)
        except Exception as e:  # reported, never swallowed
            self.errors.append(f"{study}: return failed: {e}")
        self.results[study] = {"seg": str(seg), "sr": str(sr), "seg_returned_by": "C-STORE" if even else "STOW-RS"}

    def app_command(self, folder: Path, out: Path) -> list:
        if not self.image:
            return [sys.executable, str(REPO / "app"), "-i", str(folder), "-o", str(out), "-m", str(self.model),
                    *self.app_args]
        out.mkdir(parents=True)
        os.chown(out, MAP_UID, MAP_UID)  # the image's non-root user writes the results
        return [*self.engine, "run", "--rm", "--network", "none", "-e", "OMP_NUM_THREADS=1",
                "-v", f"{folder}:/var/holoscan/input:ro", "-v", f"{out}:/var/holoscan/output", self.image,
                *self.app_args]

    @staticmethod
    def c_store(path: Path):
        ds = pydicom.dcmread(path)
        ae = AE(ae_title=GATEWAY[2])
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(ORTHANC_DICOM[0], ORTHANC_DICOM[1], ae_title=ORTHANC_DICOM[2])
        if not assoc.is_established:
            raise RuntimeError("association with Orthanc rejected")
        status = assoc.send_c_store(ds)
        assoc.release()
        if not status or status.Status != 0x0000:
            raise RuntimeError(f"C-STORE status {status}")

    @staticmethod
    def stow(path: Path):
        boundary = "tags-boundary-0123456789"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + path.read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        http("POST", "/dicom-web/studies", body,
             {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
              "Accept": "application/dicom+json"})


def wado_instance(study: str, series: str, sop: str) -> bytes:
    headers, body = http("GET", f"/dicom-web/studies/{study}/series/{series}/instances/{sop}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    boundary = headers.get_content_type() and headers.get_param("boundary")
    parts = body.split(b"--" + boundary.encode())
    payload = [p for p in parts if b"\r\n\r\n" in p][0]
    data = payload.split(b"\r\n\r\n", 1)[1]
    return data[:-2] if data.endswith(b"\r\n") else data


def dataset_bytes(data: bytes) -> bytes:
    """The bytes after the 128-byte preamble, 'DICM' and the file meta group."""
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[meta_end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--studies", required=True)
    p.add_argument("--model", help="model folder of python app (not used with --image)")
    p.add_argument("--work", required=True)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--reforward-wait", type=float, default=90,
                   help="seconds to wait for Orthanc's re-forward of every finished study")
    p.add_argument("--workers", type=int, default=2, help="application processes at a time")
    p.add_argument("--image", help="run this MAP image per series instead of python app (its model is baked in)")
    p.add_argument("--engine", help="container engine command line for --image (scripts/build_map.sh --engine)")
    a, app_args = p.parse_known_args(argv)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    orthanc = start_orthanc(work)
    report: dict = {}
    try:
        if not (a.image or a.model) or (a.image and not a.engine):
            p.error("--model, or --image with --engine, is required")
        gateway = Gateway(work, Path(a.model or "."), app_args, a.workers, a.image, tuple((a.engine or "").split()))
        studies = sorted(Path(a.studies).iterdir())
        t0 = time.time()
        for i, study in enumerate(studies):
            uid = str(pydicom.dcmread(next(study.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
            gateway.index[uid] = i
            proc = subprocess.run(["storescu", "-aec", ORTHANC_DICOM[2], ORTHANC_DICOM[0], str(ORTHANC_DICOM[1]),
                                   *map(str, sorted(study.glob("*.dcm")))], capture_output=True, text=True)
            if proc.returncode != 0 or "E:" in proc.stderr:
                raise RuntimeError(f"storescu failed: {proc.stderr[-500:]}")
        expected = set(gateway.index)
        while time.time() - t0 < a.timeout and not gateway.errors:
            segs = json.loads(http("GET", "/dicom-web/instances?Modality=SEG")[1] or b"[]")
            if len({s["0020000D"]["Value"][0] for s in segs}) >= len(expected) and len(gateway.results) >= len(expected):
                break
            time.sleep(2)
        # The results make each study stable again and Orthanc forwards its CT once more: wait
        # until every study's re-forward reached the gateway (it must be skipped, not run).
        t1 = time.time()
        while time.time() - t1 < a.reforward_wait and gateway.duplicates_skipped < len(expected) and not gateway.errors:
            time.sleep(1)
        time.sleep(3)  # a wrongly queued re-forward would have started an application run by now
        per_study = {}
        for uid in sorted(expected):
            series = json.loads(http("GET", f"/dicom-web/studies/{uid}/series")[1] or b"[]")
            modalities = sorted(s["00080060"]["Value"][0] for s in series)
            segs = json.loads(http("GET", f"/dicom-web/studies/{uid}/instances?Modality=SEG")[1] or b"[]")
            srs = json.loads(http("GET", f"/dicom-web/studies/{uid}/instances?Modality=SR")[1] or b"[]")
            entry = {"modalities": modalities, "seg_instances": len(segs), "sr_instances": len(srs),
                     "app_runs": gateway.app_runs.get(uid, 0), "app_seconds": gateway.app_seconds.get(uid)}
            res = gateway.results.get(uid)
            if res and segs:
                s = segs[0]
                wado = wado_instance(uid, s["0020000E"]["Value"][0], s["00080018"]["Value"][0])
                written = Path(res["seg"]).read_bytes()
                entry.update(returned_by=res["seg_returned_by"], file_identical=wado == written,
                             dataset_identical=dataset_bytes(wado) == dataset_bytes(written))
            per_study[uid] = entry
        report = {"studies_sent": len(expected), "results": len(gateway.results), "per_study": per_study,
                  "duplicates_skipped": gateway.duplicates_skipped, "errors": gateway.errors,
                  "most_apps_at_once": gateway.most_running, "runner": a.image or "python app",
                  "seconds": round(time.time() - t0, 1)}
        gateway.server.shutdown()
    finally:
        stop(orthanc)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

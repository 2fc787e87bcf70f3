"""The application's SEG and SR as a radiologist sees them: OHIF Viewer v3 in headless Chromium.

The application runs with the committed demo model (organ segments on) on the LiTS-117 sample
study, as acquired and as a feet-first copy with flipped columns. scripts/review.py puts the
study and its results into Orthanc and serves OHIF beside its DICOMweb; Chromium (Debian's,
driven by selenium through Debian's chromium-driver, WebGL on SwiftShader) opens the study,
loads the SEG as a user does (double-click on its thumbnail, "Yes"), and the test checks:
- OHIF shows no notification (warning) while it reads the SEG;
- the segmentation panel lists the SEG's segment labels;
- on the slice with the most tumor, the overlay's coloured pixels lie where the SEG says: the
  SEG's frame for that CT instance is projected through the viewport's own world-to-canvas
  transform, and each segment's colour must cover its region and stay inside it;
- the SR is listed in the study browser and, opened, OHIF reads one measurement per lesion with
  the volume and axes of tags_lesions.json. OHIF 3.13 draws none of them: it skips measurement
  groups without SCOORD/SCOORD3D ("ContentSequence array contains no SCOORD or SCOORD3D entry,
  skipping annotation") and our groups are volumetric, referencing the SEG segment (TID 1411);
  docs/review.md shows it.
Screenshots are kept in build/test-artifacts/ohif/. Needs npm (fetches OHIF once), chromium,
chromium-driver and Orthanc (scripts/apt_packages.sh installs them); a missing one fails the
test with its name, it never skips.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from app import run

from helpers import flipped

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "liver-demo"
ARTIFACTS = REPO / "build" / "test-artifacts" / "ohif"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--disable-dev-shm-usage",
                  "--window-size=1600,1000", "--force-device-scale-factor=1")
CHROMA = 30  # an overlay pixel: max - min of its RGB over this (the CT underneath is grey)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} not found: scripts/apt_packages.sh installs npm, chromium and chromium-driver"
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Study folder and result folder of each case."""
    from training.dicom_series import SeriesInfo, read_series, write_ct_series
    from training.sample_study import build_sample_studies

    root = tmp_path_factory.mktemp("ohif")
    study = build_sample_studies(root / "studies")["lits117"]
    vol, affine = read_series(study)
    # feet first, columns flipped: the same pixels stored in another order, the same anatomy
    ffs = root / "ffs"
    write_ct_series(*flipped(vol, affine, (True, False, True)), ffs, SeriesInfo(uid_seed="ohif-ffs", patient_position="FFS",
                                                series_description="LiTS-117 crop, feet first, columns flipped"))
    out = {}
    for name, folder in (("as acquired", study), ("feet first, columns flipped", ffs)):
        out[name] = (folder, root / f"out-{len(out)}")
        run(["-i", str(folder), "-o", str(out[name][1]), "-m", str(MODEL), "--organ-segments"])
    return out


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _need("chromium")
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_need("chromedriver")), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _wait(fn, what: str, timeout: float = 120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"OHIF: timed out after {timeout:.0f} s waiting for {what}")


def _open_and_load_seg(d, url: str, viewer: str):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d.get(url + "/app-config.js")  # same origin: skip OHIF's first-visit tour
    d.execute_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
    d.get(viewer)

    def thumbnail(modality):
        for t in d.find_elements(By.CSS_SELECTOR, '[data-cy="study-browser-thumbnail-no-image"]'):
            labels = t.find_elements(By.CSS_SELECTOR, '[data-cy="series-modality-label"]')
            if labels and labels[0].text.strip() == modality:
                return t
        return None

    seg = _wait(lambda: thumbnail("SEG"), "the SEG thumbnail in the study browser")
    sr = thumbnail("SR")
    _wait(lambda: d.execute_script(
        "const vp = window.cornerstone.getRenderingEngines()[0]?.getViewport('default');"
        "return vp && vp.getImageIds && vp.getImageIds().length > 0"), "the CT in the viewport")
    ActionChains(d).double_click(seg).perform()
    yes = _wait(lambda: d.find_elements(By.CSS_SELECTOR, '[data-cy="yes-hydrate-btn"]'), "the load-SEG prompt")
    yes[0].click()
    _wait(lambda: d.execute_script("return window.services.segmentationService.getSegmentations().length"),
          "the segmentation to load")
    return sr


def _panel_labels(d) -> list:
    from selenium.webdriver.common.by import By

    if not d.find_elements(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]'):
        d.find_element(By.CSS_SELECTOR, '[data-cy="side-panel-header-right"]').click()
    _wait(lambda: d.find_elements(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]'), "the segmentation tab")
    d.find_element(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]').click()
    rows = _wait(lambda: d.find_elements(By.CSS_SELECTOR, '[data-cy="data-row-title"]'), "segment rows")
    return sorted(r.text.strip() for r in rows)


def _open_sr(d, thumbnail) -> list:
    """Opens the SR as a user does (double-click); returns the values OHIF read per measurement."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(d).double_click(thumbnail).perform()
    return _wait(lambda: d.execute_script("""
        const sr = window.services.displaySetService.getActiveDisplaySets().find(x => x.Modality === 'SR');
        if (!sr || !sr.isLoaded || !sr.measurements) return null;
        const values = sr.measurements.map(m => (m.labels || []).map(l => l.value));
        return values.every(v => v.length === 3) ? {values} : null;
    """), "the SR to be read")["values"]


def _ct_geometry(study: Path) -> dict:
    """SOP instance UID -> (position, row direction, column direction, (row, column) spacing)."""
    geo = {}
    for path in study.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, float)
        geo[str(ds.SOPInstanceUID)] = (np.array(ds.ImagePositionPatient, float), iop[:3], iop[3:],
                                       tuple(float(v) for v in ds.PixelSpacing))
    return geo


def _show_slice(d, sop: str, corners: list) -> dict:
    """Moves the viewport to the CT instance ``sop``; returns where the pixel-index corners
    (world points) land on the page and the segment colours OHIF draws."""
    return d.execute_async_script("""
        const [sop, corners, done] = arguments;
        const vp = window.cornerstone.getRenderingEngines()[0].getViewport('default');
        const k = vp.getImageIds().findIndex(id => id.includes('/instances/' + sop + '/'));
        Promise.resolve(vp.setImageIdIndex(k)).then(() => setTimeout(() => {
          vp.render();
          setTimeout(() => {
            const rect = vp.canvas.getBoundingClientRect();
            const svc = window.services.segmentationService;
            const seg = svc.getSegmentations()[0];
            const colours = {};
            for (const s of Object.values(seg.segments)) {
              if (s) colours[s.label] = svc.getSegmentColor('default', seg.segmentationId, s.segmentIndex);
            }
            done({index: k, current: vp.getCurrentImageIdIndex(), rect: [rect.left, rect.top, rect.width, rect.height],
                  corners: corners.map(p => vp.worldToCanvas(p)), colours});
          }, 1500);
        }, 500));
    """, sop, corners)


def _projected(mask: np.ndarray, corners: list, shape: tuple, offset: tuple) -> np.ndarray:
    """``mask`` (rows x columns of one CT slice) drawn on a page of ``shape`` (height, width):
    ``corners`` are the page positions of pixel (0, 0), (0, 1) and (1, 0)."""
    o, u, v = (np.array(c, float) + offset for c in corners)
    basis = np.stack([u - o, v - o], axis=1)  # page (x, y) = o + basis @ (column, row)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    cr = np.linalg.solve(basis, np.stack([xs.ravel() + 0.5 - o[0], ys.ravel() + 0.5 - o[1]]))
    c, r = np.rint(cr).astype(int)
    inside = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
    out = np.zeros(xs.size, bool)
    out[inside] = mask[r[inside], c[inside]]
    return out.reshape(shape)


def _classify(rgb: np.ndarray, colours: dict) -> dict:
    """Per segment label, the pixels drawn in its colour over the grey CT, alone or blended with
    the other segment's (OHIF blends overlapping segments). Each pixel's chroma (RGB minus its
    grey) is decomposed on the segment colours' chroma directions; a pixel counts for a segment
    when the decomposition explains it and the segment's share is over CHROMA / 2. The viewer's
    own colours (blue icons, orange borders) are not explained and count for none."""
    px = rgb.astype(float)
    chroma = px - px.mean(axis=2, keepdims=True)
    overlay = (px.max(axis=2) - px.min(axis=2)) > CHROMA
    basis = np.stack([np.array(c[:3], float) - np.mean(c[:3]) for c in colours.values()], axis=1)
    basis /= np.linalg.norm(basis, axis=0)
    coef = chroma @ np.linalg.pinv(basis).T  # (H, W, segments)
    residual = np.linalg.norm(chroma - coef @ basis.T, axis=-1) / np.maximum(np.linalg.norm(chroma, axis=-1), 1e-6)
    explained = overlay & (residual < 0.35)
    return {k: explained & (coef[..., i] > CHROMA / 2) for i, k in enumerate(colours)}


@pytest.mark.parametrize("case", ["as acquired", "feet first, columns flipped"])
def test_ohif_shows_the_seg_on_the_right_pixels(cases, browser, case):
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from review import review_server

    _need("npm")
    study, out = cases[case]
    seg_path = next(out.glob("SEG_*.dcm"))
    seg = hd.seg.segread(seg_path)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    geo = _ct_geometry(study)
    # the CT slice with the most tumor, and both segments on it
    tumor_n = [k for k, v in labels.items() if "tumor" in v][0]
    areas = {}
    for sop in geo:
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[sop], segment_numbers=[tumor_n],
                                               assert_missing_frames_are_empty=True)
        areas[sop] = int(px.sum())
    sop = max(areas, key=areas.get)
    assert areas[sop] > 50, "the demo model found no tumor on the LiTS-117 study"
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=[sop], segment_numbers=sorted(labels),
                                              assert_missing_frames_are_empty=True)[0].astype(bool)
    pos, row_dir, col_dir, (dr, dc) = geo[sop]
    corners = [list(pos), list(pos + row_dir * dc), list(pos + col_dir * dr)]  # pixel (0,0), (0,1), (1,0)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = case.replace(",", "").replace(" ", "-")
    with review_server([study, out]) as served:
        (uid, info), = served["studies"].items()
        assert info["modalities"] == ["CT", "SEG", "SR"]
        d = browser
        t0 = time.time()
        sr_thumbnail = _open_and_load_seg(d, served["url"], info["viewer"])
        assert sr_thumbnail is not None, "the SR is not listed in OHIF's study browser"
        assert _panel_labels(d) == sorted(labels.values())
        view = _show_slice(d, sop, corners)
        # OHIF's notifications (sonner toasts) while it reads the SEG: a warning about our object
        # is a defect (e.g. no recommended display colour), and a toast would cover the overlay
        toasts = d.execute_script("return [...document.querySelectorAll('[data-sonner-toast]')]"
                                  ".map(t => t.innerText.replace(/\\s+/g, ' ').trim())")
        shot = np.array(Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB"))
        Image.fromarray(shot).save(ARTIFACTS / f"{stem}-seg.png")
        seconds = time.time() - t0
        read = _open_sr(d, sr_thumbnail)
        d.save_screenshot(str(ARTIFACTS / f"{stem}-sr.png"))
    assert toasts == [], f"OHIF notified while showing the SEG: {toasts}"
    targets = json.loads((out / "tags_lesions.json").read_text())["targets"].values()
    lesions = [t for t in targets if t["segment_number"] == tumor_n][0]["lesions"]
    # OHIF shows each value with 2 decimals and its unit
    assert all(v[0].endswith(" mL") and v[1].endswith(" mm") and v[2].endswith(" mm") for v in read), read
    shown = sorted(tuple(float(x.split()[0]) for x in v) for v in read)
    # in the order of the values as shown (two lesions of 0.270 and 0.273 ml both show 0.27)
    written = sorted(((x["volume_ml"], x["long_axis_mm"], x["short_axis_mm"]) for x in lesions),
                     key=lambda v: tuple(round(x, 2) for x in v))
    assert len(shown) == len(written) and np.allclose(shown, written, atol=0.006), (shown, written)
    assert view["index"] >= 0 and view["current"] == view["index"], view
    x, y, w, h = (int(round(v)) for v in view["rect"])
    crop = shot[y + 3:y + h - 3, x + 3:x + w - 3]  # inside the active viewport's border
    offset = (-3.0, -3.0)
    expected = {labels[n]: _projected(masks[..., i], view["corners"], crop.shape[:2], offset)
                for i, n in enumerate(sorted(labels))}
    seen = _classify(crop, {k: view["colours"][k] for k in expected})
    organ = [k for k in expected if k != labels[tumor_n]][0]
    tumor = labels[tumor_n]
    near = {k: ndimage.binary_dilation(m, iterations=4) for k, m in expected.items()}
    # where the segments overlap OHIF blends their colours: a blend may lean either way
    near[organ] = ndimage.binary_dilation(expected[organ] | expected[tumor], iterations=4)
    core = {tumor: ndimage.binary_erosion(expected[tumor], iterations=2),
            organ: ndimage.binary_erosion(expected[organ] & ~near[tumor], iterations=2)}
    report = {k: {"expected_px": int(expected[k].sum()), "coloured_px": int(seen[k].sum()),
                  "coloured_inside": round(float((seen[k] & near[k]).sum() / max(seen[k].sum(), 1)), 3),
                  "region_covered": round(float((seen[k] & core[k]).sum() / max(core[k].sum(), 1)), 3)}
              for k in expected}
    report["seconds"] = round(seconds, 1)
    (ARTIFACTS / f"{stem}-check.json").write_text(json.dumps(report, indent=1))
    print(f"\n[ohif] {case}: {json.dumps(report)}")
    for k in expected:
        assert report[k]["coloured_px"] > 0, (k, report)
        # where the viewer draws this segment's colour, the SEG has it (4 px of edge allowed) ...
        assert report[k]["coloured_inside"] >= 0.98, (k, report)
        # ... and the SEG's region is drawn in it
        assert report[k]["region_covered"] >= 0.95, (k, report)

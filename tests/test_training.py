"""Training on the real sample data: loss goes down, resume continues, export -> predictor."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from tags.config import ModelConfig
from tags.geometry import affine_from_spacing
from tags.network import build_tags
from tags.device import default_precision
from tags.inference import TagsPredictor
from tags.model_folder import CARD, load_model_folder
from helpers import nnunet_copy
from training.cli import main
from training.data import SamplingConfig, draw_sample, load_training_cases
from training.datasets import read_dataset
from training.samples import build_samples
from training.checkpoints import checkpoint_files, checkpoint_state, load_checkpoint
from training.train import METRICS, TRAIN_CONFIG, TrainConfig, model_config_for, train, warmup_cosine
from training.export import export_model

TINY_MODEL = ModelConfig(encoder_size=128, roi_size=(8, 32, 32), organ_roi_size=(8, 32, 32))
TINY = dict(model=TINY_MODEL, progress=False)
TINY_CLI = ["--encoder-size", str(TINY_MODEL.encoder_size), "--roi", *map(str, TINY_MODEL.roi_size),
            "--organ-roi", *map(str, TINY_MODEL.organ_roi_size), "--no-progress"]
"""The same small run for the command line (encoder at 128 pixels, as the demo model)."""


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return build_samples(tmp_path_factory.mktemp("samples"), overwrite=True)


def test_loss_decreases_on_a_real_crop(samples):
    cfg = TrainConfig(datasets=[str(samples["lits117"])], out="unused", **TINY)
    mcfg = model_config_for(cfg, text_dim=384)
    torch.manual_seed(0)
    net = build_tags(mcfg)
    cases = load_training_cases([read_dataset(samples["lits117"])], mcfg)
    rng = np.random.default_rng(3)
    s = draw_sample(cases, mcfg.tumor_targets, mcfg, rng, sampling=SamplingConfig(organ_fraction=0, prompt_drop=0,
                                                                                box_jitter=0),
                    img_size=net.img_size, mask_size=net.prompt_encoder.mask_input_size[0])
    assert s.target.name == "liver_tumor" and s.label.sum() > 0 and s.organ.sum() > 0
    text = torch.nn.functional.normalize(torch.randn(1, 384), dim=-1)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=5e-4)
    loss_fn = DiceCELoss(sigmoid=True)
    losses = []
    net.train()
    for _ in range(6):
        loss = loss_fn(net(s.image[None], text, s.prompts, s.organ[None]), s.label[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    print("losses:", [round(v, 4) for v in losses])
    assert losses[-1] < losses[0] - 0.02


def test_resume_continues_from_the_saved_step(samples, tmp_path, monkeypatch):
    common = dict(datasets=[str(samples["lits117"])], steps=2, checkpoint_every=1, precision="fp32", **TINY)
    full = train(TrainConfig(out=str(tmp_path / "full"), **common))
    part = tmp_path / "part"
    import time as real_time
    from training import train as train_module

    class SlowClock:  # the first part's step seems to take 1000 s
        calls = 0

        def __getattr__(self, name):
            return getattr(real_time, name)

        def time(self):
            SlowClock.calls += 1
            return real_time.time() + (1000.0 if SlowClock.calls > 1 else 0.0)

    with monkeypatch.context() as m:
        m.setattr(train_module, "time", SlowClock())
        train(TrainConfig(out=str(part), **common), stop_after=1)
    assert load_checkpoint(part)[2]["step"] == 1
    assert load_checkpoint(part)[2]["seconds"] >= 1000.0
    entries = sorted(p.name for p in (part / "cache").iterdir() if p.is_dir())
    # resumes; with other grids on the command line, a resumed run keeps (and caches) its own
    other_grids = dataclasses.replace(TINY_MODEL, preprocessing=dataclasses.replace(
        TINY_MODEL.preprocessing, spacing=(2.0, 2.0, 2.0)))
    train(TrainConfig(out=str(part), **{**common, "model": other_grids}))
    assert sorted(p.name for p in (part / "cache").iterdir() if p.is_dir()) == entries
    w_full, _, s_full = load_checkpoint(full)
    w_part, _, s_part = load_checkpoint(part)
    assert s_full["step"] == s_part["step"] == 2
    for k in w_full:
        assert torch.equal(w_full[k], w_part[k]), k
    assert len(checkpoint_files(part)) == 2  # keep_checkpoints: the two newest of two
    lines = [json.loads(x) for x in (part / METRICS).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    # the training time goes on from the checkpoint's: the baseline of a resumed demo build gets all of it
    assert s_part["seconds"] == lines[1]["seconds"] >= lines[0]["seconds"] >= 1000.0
    cfg = TrainConfig(out=str(part), **common)  # the logged rate is the one of the step just taken
    assert [x["lr"] for x in lines] == [cfg.lr * warmup_cosine(s, cfg.warmup, cfg.steps) for s in (0, 1)]
    # The run folder's options read back as given, the model resolved (targets, text width).
    recorded = TrainConfig.from_dict(json.loads((part / TRAIN_CONFIG).read_text()))
    assert recorded.model == ModelConfig.from_dict(s_part["model_config"])
    assert dataclasses.replace(recorded, model=TINY_MODEL) == cfg


def test_the_slab_convolution_trains_only_when_asked(samples, tmp_path):
    """Frozen by default (no backward through the frozen encoder); --train-slab-mix trains it, and a
    resumed run keeps the choice its checkpoint was made with."""
    common = dict(datasets=[str(samples["lits117"])], steps=2, checkpoint_every=1, precision="fp32", **TINY)
    key = "image_encoder.slab.mix.weight"
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **common))
    assert not load_checkpoint(plain)[0][key].any()  # its zero initialisation
    mixed = tmp_path / "mixed"
    train(TrainConfig(out=str(mixed), train_slab_mix=True, **common), stop_after=1)
    after_one = load_checkpoint(mixed)[0][key].clone()
    assert after_one.any()
    train(TrainConfig(out=str(mixed), **common))  # resumed without the flag: still trained
    assert not torch.equal(load_checkpoint(mixed)[0][key], after_one)
    assert json.loads((plain / TRAIN_CONFIG).read_text())["train_slab_mix"] is False
    older = {k: v for k, v in TrainConfig(out="x", **common).to_dict().items() if k != "train_slab_mix"}
    assert TrainConfig.from_dict(older).train_slab_mix  # run folders from before the option trained it


def test_the_adapters_train_unless_frozen(samples, tmp_path):
    """The encoder's 3D adapters are trained weights of the run (in its checkpoints, moved by
    training); --freeze-adapters keeps them the identity; a run folder from before the option
    resumes with them frozen, as it was trained."""
    common = dict(datasets=[str(samples["lits117"])], steps=2, checkpoint_every=1, precision="fp32", **TINY)
    up = "image_encoder.encoder.layers.1.blocks.0.adapter.up.weight"
    trained = load_checkpoint(train(TrainConfig(out=str(tmp_path / "trained"), **common)))[0]
    frozen = load_checkpoint(train(TrainConfig(out=str(tmp_path / "frozen"), train_adapters=False, **common)))[0]
    assert trained[up].any()  # moved from its zero initialisation
    assert up in frozen and not frozen[up].any()
    older = {k: v for k, v in TrainConfig(out="x", **common).to_dict().items() if k != "train_adapters"}
    assert not TrainConfig.from_dict(older).train_adapters


def test_adapters_for_tumors_only_learn_nothing_from_organ_steps(samples, tmp_path):
    """With adapter.for_organs off, organ-target steps run without the adapters: a run of organ
    steps only leaves them at their zero initialisation while the rest of the network moves; the
    model folder it exports records the choice."""
    model = dataclasses.replace(TINY_MODEL, adapter=dataclasses.replace(TINY_MODEL.adapter, for_organs=False))
    run = train(TrainConfig(datasets=[str(samples["lits117"])], out=str(tmp_path / "run"), steps=2, checkpoint_every=1,
                            precision="fp32", progress=False, model=model,
                            sampling=SamplingConfig(organ_fraction=1.0)))
    weights = load_checkpoint(run)[0]
    adapters = [k for k in weights if ".adapter.up." in k]
    assert adapters and not any(weights[k].any() for k in adapters)
    assert weights["text.film.weight"].any()  # zero-initialised too, and moved by the organ steps
    folder = export_model(run, tmp_path / "model")
    assert load_model_folder(folder).config.adapter.for_organs is False


def test_a_run_of_chosen_targets_exports_an_organ_model(samples, tmp_path, capsys):
    """--targets liver trains the organ target alone (every step an organ step, the model folder
    has no tumor target), and that folder runs the organ pass of another run's model folder
    (tags-train export --organ-model); a target the datasets lack is refused before anything is
    written."""
    common = dict(datasets=[str(samples["lits117"])], checkpoint_every=1, precision="fp32", progress=False,
                  model=TINY_MODEL)
    with pytest.raises(ValueError, match=r"targets \['spleen'\] are not in the datasets"):
        train(TrainConfig(out=str(tmp_path / "bad"), steps=1, targets=["spleen"], **common))
    assert not (tmp_path / "bad").exists()
    organ_run = train(TrainConfig(out=str(tmp_path / "organ"), steps=1, targets=["liver"], **common))
    organ = export_model(organ_run, tmp_path / "organ.model")
    assert [t.name for t in load_model_folder(organ).config.targets] == ["liver"]
    run = train(TrainConfig(out=str(tmp_path / "run"), steps=1, **common))
    assert main(["export", str(run), str(tmp_path / "model"), "--organ-model", str(organ), "--organ-pass", "union"]) == 0
    paired = load_model_folder(tmp_path / "model")
    assert paired.organ is not None and [t.name for t in paired.organ.config.targets] == ["liver"]
    assert paired.config.organ_pass == "union" and load_model_folder(organ).config.organ_pass == "own"
    assert "either network finds" in (tmp_path / "model" / CARD).read_text()
    # a folder without the organ target cannot run the organ pass
    assert main(["export", str(run), str(tmp_path / "model2"), "--organ-model", str(tmp_path / "model")]) != 0
    assert "organ model of its own" in capsys.readouterr().err and not (tmp_path / "model2").exists()
    assert main(["export", str(run), str(tmp_path / "near"), "--organ-model", str(organ), "--organ-pass", "near_union",
                 "--organ-near-mm", "12.5"]) == 0
    assert load_model_folder(tmp_path / "near").config.organ_near_mm == 12.5
    assert main(["export", str(run), str(tmp_path / "near2"), "--organ-model", str(organ), "--organ-pass", "near_union",
                 "--organ-near-mm", "-1"]) != 0
    assert "organ_near_mm must be a positive distance" in capsys.readouterr().err and not (tmp_path / "near2").exists()


def test_the_adapters_learning_rate_scale(samples, tmp_path, capsys):
    """--adapter-lr-scale puts the adapters in an AdamW group of their own whose rate is that
    multiple of --lr (AdamW's step is about the rate: they move about a tenth as far); the group
    is in the checkpoint and a resumed run keeps it."""
    common = dict(datasets=[str(samples["lits117"])], steps=2, checkpoint_every=1, precision="fp32", **TINY)
    up = "image_encoder.encoder.layers.1.blocks.0.adapter.up.weight"
    full = load_checkpoint(train(TrainConfig(out=str(tmp_path / "full"), **common)))[0][up].abs().max()
    run = tmp_path / "scaled"
    train(TrainConfig(out=str(run), adapter_lr_scale=0.1, **dict(common, steps=3)), stop_after=2)
    weights, _, state = load_checkpoint(run)
    assert 0.05 * full < weights[up].abs().max() < 0.2 * full
    assert sorted(g["lr_scale"] for g in state["param_groups"]) == [0.1, 1.0]
    train(TrainConfig(out=str(run), **dict(common, steps=3)))  # resumed without the option: kept, and said so
    assert "resuming with the run's own adapter-lr-scale 0.1" in capsys.readouterr().err
    assert load_checkpoint(run)[2]["train_config"]["adapter_lr_scale"] == 0.1
    assert sorted(g["lr_scale"] for g in load_checkpoint(run)[2]["param_groups"]) == [0.1, 1.0]


def test_workers_and_a_shared_cache_train_the_same_weights(samples, tmp_path):
    """Two loader workers and a cache shared with another run give the weights of the serial run."""
    common = dict(datasets=[str(samples["lits117"])], steps=2, checkpoint_every=2, precision="fp32", **TINY)
    serial = train(TrainConfig(out=str(tmp_path / "serial"), **common))
    shared = tmp_path / "shared-cache"
    workers = train(TrainConfig(out=str(tmp_path / "workers"), workers=2, cache_dir=str(shared), **common))
    assert (serial / "cache").is_dir() and any(shared.iterdir()) and not (workers / "cache").exists()
    w0, w2 = load_checkpoint(serial)[0], load_checkpoint(workers)[0]
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


def test_a_batch_step_is_the_mean_of_its_samples(samples, tmp_path):
    """--batch-size: samples of one target and shape run as one network batch, the rest one after
    the other; the step's gradient equals the mean of the samples' own gradients (the network in
    eval mode: the head's BatchNorm would otherwise see batch statistics); sample 0 of each
    step is the single-sample stream's sample; a batch run trains through the command line."""
    from training.loader import StepSamples, group_batch
    from training.train import _step, loss_scaler

    cfg = TrainConfig(datasets=[str(samples["lits117"])], out="unused", precision="fp32", clip_grad=1e9, lr=0.0,
                      **TINY)  # lr 0: a step that changes nothing, gradients only
    mcfg = model_config_for(cfg, text_dim=384)
    cases = load_training_cases([read_dataset(samples["lits117"])], mcfg)
    torch.manual_seed(0)
    net = build_tags(mcfg).eval()
    kw = dict(seed=0, rank=0, steps=40, img_size=net.img_size, mask_size=net.prompt_encoder.mask_input_size[0])
    one, four = StepSamples(cases, mcfg, cfg.sampling, **kw), StepSamples(cases, mcfg, cfg.sampling, batch_size=4, **kw)
    step, batch = next((k, four[k]) for k in range(40) if any(len(g) > 1 for g in group_batch(four[k])))
    assert torch.equal(batch[0].image, one[step][0].image) and len(group_batch(batch)) < 4
    text = {t.name: torch.nn.functional.normalize(torch.randn(384), dim=-1) for t in mcfg.targets}
    params = [p for p in net.parameters() if p.requires_grad]

    def grads(samples_):
        opt = torch.optim.SGD(params, lr=0.0)
        _step(cfg, net, opt, loss_scaler(torch.device("cpu"), "fp32"), DiceCELoss(sigmoid=True), text, samples_,
              torch.device("cpu"), step)
        return [p.grad.clone() for p in params]

    together = grads(batch)
    alone = [grads([s]) for s in batch]
    for i, g in enumerate(together):
        mean = sum(a[i] for a in alone) / len(batch)
        assert torch.allclose(g, mean, rtol=1e-3, atol=1e-6), i
    run = tmp_path / "batch"
    assert main(["train", str(samples["lits117"]), "--out", str(run), "--steps", "2", "--batch-size", "3",
                 "--precision", "fp32", *TINY_CLI]) == 0
    assert load_checkpoint(run)[2]["step"] == 2 and TrainConfig.from_dict(
        json.loads((run / TRAIN_CONFIG).read_text())).batch_size == 3


def test_validation_keeps_the_best_checkpoint_and_writes_tensorboard(samples, tmp_path, capsys):
    """--validate-every: a validation case through the predictor (organ prompt from its label),
    the best checkpoint kept apart and exportable, TensorBoard events; --patience stops early."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    ds = nnunet_copy(samples, tmp_path / "Dataset601_LiverVal", {"background": 0, "liver": 1, "tumor": 2},
                     validation=True)
    assert main(["train", str(ds), "--out", str(run), "--steps", "6", "--checkpoint-every", "3",
                 "--validate-every", "2", "--patience", "1", "--precision", "fp32", *TINY_CLI]) == 0
    lines = [json.loads(x) for x in (run / METRICS).read_text().splitlines()]
    validations = [x for x in lines if "validation" in x]
    assert validations and all(x["validation"]["liver_tumor"]["dice"] is not None for x in validations)
    last = validations[-1]
    stale = [x for x in validations if x["stale"] >= 1]
    if stale:  # the first validation that did not improve stopped the run, with a checkpoint there
        assert stale == [last] and load_checkpoint(run)[2]["step"] == last["step"] < 6
    else:
        assert [x["step"] for x in validations] == [2, 4, 6]
    best = load_checkpoint(run, "best")[2]
    assert best["step"] == last["best_step"] and best["validation_state"]["best_score"] == last["best_score"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "validation/score", "validation/liver_tumor/dice"} <= set(events.Tags()["scalars"])
    assert "train/sample" in events.Tags()["images"]
    assert main(["export", str(run), str(tmp_path / "model"), "--best"]) == 0
    assert "model folder" in capsys.readouterr().out


def test_export_then_predict(samples, tmp_path, capsys):
    """Train one step at the default precision (resolved for this CPU and recorded), export,
    predict from the model folder."""
    run = tmp_path / "run"
    assert main(["train", str(samples["lits117"]), "--out", str(run), "--steps", "1", *TINY_CLI]) == 0
    assert json.loads((run / TRAIN_CONFIG).read_text())["precision"] == default_precision(torch.device("cpu"))
    out = tmp_path / "model"
    assert main(["export", str(run), str(out)]) == 0
    assert "model folder" in capsys.readouterr().out
    pred = TagsPredictor.from_model_folder(out, device="cpu")
    assert {t.name for t in pred.config.targets} == {"liver", "liver_tumor"}
    assert pred.config.encoder_size == 128  # --encoder-size reaches the model folder
    card = (out / CARD).read_text()
    assert "Not for clinical use" in card and "minilm" in card
    organ = np.zeros((10, 60, 60), bool)
    organ[1:9, 5:55, 5:55] = True  # 90 ml: within the liver's plausible volume
    r = pred.predict(np.random.default_rng(0).normal(60, 30, organ.shape).astype(np.float32),
                     affine_from_spacing((2.0, 1.5, 1.5)), {"liver": organ})
    assert r["liver_tumor"].status == "ok" and r["liver_tumor"].probability.shape == organ.shape
    assert main(["export", str(run), str(out)]) == 2  # exists: refused


def test_fine_tuning_starts_from_a_model_folder(samples, tmp_path, capsys):
    """--init: the run starts from the folder's weights and settings (at learning rate 0 it ends
    with them), drops its organ boundary and lesion decision, and refuses a dataset with a
    target the folder does not have."""
    run = tmp_path / "run"
    assert main(["train", str(samples["lits117"]), "--out", str(run), "--steps", "1", "--precision", "fp32",
                 *TINY_CLI]) == 0
    base = tmp_path / "base"
    assert main(["export", str(run), str(base)]) == 0
    from tags.config import LesionDecision, OrganBoundary
    from tags.model_folder import load_model_folder, save_model_folder

    folder = load_model_folder(base)
    decided = tmp_path / "decided"
    save_model_folder(decided, config=dataclasses.replace(folder.config, organ_boundary=OrganBoundary(),
                                                          lesion_decision=LesionDecision(min_volume_ml=1.0)),
                      weights=folder.weights, text_embeddings=folder.text_embeddings,
                      base_checkpoint_sha256=folder.metadata["base_checkpoint"]["sha256"], card="x")
    tuned = tmp_path / "tuned"
    capsys.readouterr()
    assert main(["train", str(samples["lits117"]), "--out", str(tuned), "--steps", "1", "--lr", "0",
                 "--precision", "fp32", "--init", str(decided), "--no-progress", "--tumor-only-adapters"]) == 0
    assert "--init keeps the model folder's adapters for organ and tumor targets" in capsys.readouterr().err
    weights, _, state = load_checkpoint(tuned)
    recorded = TrainConfig.from_dict(json.loads((tuned / TRAIN_CONFIG).read_text()))
    assert recorded.init == str(decided) and recorded.model == ModelConfig.from_dict(state["model_config"])
    assert set(weights) == set(folder.weights)
    assert all(torch.equal(weights[k], folder.weights[k]) for k in weights)
    config = ModelConfig.from_dict(state["model_config"])
    assert config.roi_size == TINY_MODEL.roi_size  # the folder's settings, not the command line's defaults
    assert config.organ_boundary is None and config.lesion_decision == LesionDecision()
    assert main(["export", str(tuned), str(tmp_path / "tuned-model")]) == 0
    assert f"fine-tuned: the run started from the weights of the model folder {decided}" in (
        tmp_path / "tuned-model" / CARD).read_text()
    other = nnunet_copy(samples, tmp_path / "Dataset009_Other", {"background": 0, "kidney": 1},
                        label_map=lambda lab: (lab > 0).astype(lab.dtype))
    capsys.readouterr()
    assert main(["train", str(other), "--out", str(tmp_path / "bad"), "--steps", "1", "--init", str(decided),
                 "--no-progress"]) == 2
    assert "kidney" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before the cache or the run folder is written


@pytest.mark.parametrize("folder, labels", [
    ("Dataset003_Liver", {"background": 0, "liver": 1, "cancer": 2}),  # nnU-Net's MSD converter
    ("Dataset220_KiTS2023", {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}),  # regions
])
def test_converted_and_region_datasets_train(samples, tmp_path, folder, labels):
    """Targets come from the label names: a converted MSD liver set and KiTS23's region labels
    train (two steps) and the run's model targets are the ones the labels name."""
    ds = nnunet_copy(samples, tmp_path / folder, labels)
    run = tmp_path / "run"
    assert main(["train", str(ds), "--out", str(run), "--steps", "2", *TINY_CLI]) == 0
    organ = "kidney" if "KiTS" in folder else "liver"
    cfg = json.loads((run / TRAIN_CONFIG).read_text())
    assert [t["name"] for t in cfg["model"]["targets"]] == [organ, f"{organ}_tumor"]


def _torchrun(dataset, run, port: int, steps: int) -> list:
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "training.cli", "train", str(dataset), "--out", str(run), "--steps", str(steps),
            "--checkpoint-every", "1", "--validate-every", "2", *TINY_CLI, "--precision", "fp32"]


def test_torchrun_two_cpu_processes_agree_validate_and_resume_after_a_kill(samples, tmp_path):
    """Two gloo processes: the ranks agree, rank 0 validates and writes TensorBoard events and
    the best checkpoint; a run killed (SIGKILL) mid-way and started again resumes from its last
    complete checkpoint and ends with the weights of the uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    ds = nnunet_copy(samples, tmp_path / "Dataset601_LiverVal", {"background": 0, "liver": 1, "tumor": 2},
                     validation=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    proc = subprocess.run(_torchrun(ds, full, 29517, 4), capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((full / "ddp_check.json").read_text())
    assert check["world_size"] == 2 and check["agree"], check
    assert load_checkpoint(full)[2]["world_size"] == 2 and load_checkpoint(full, "best")[2]["step"] in (2, 4)
    assert any((full / "tensorboard").iterdir())

    part = tmp_path / "part"
    killed = subprocess.Popen(_torchrun(ds, part, 29518, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env, start_new_session=True)
    deadline = time.time() + 600
    while not checkpoint_files(part) and time.time() < deadline and killed.poll() is None:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    reached = checkpoint_state(part)["step"]
    proc = subprocess.run(_torchrun(ds, part, 29519, 4), capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"killed after step {reached}, resumed to step 4")
    w_full, w_part = load_checkpoint(full)[0], load_checkpoint(part)[0]
    assert load_checkpoint(part)[2]["step"] == 4
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)


def test_organ_samples_of_a_healthy_liver_get_synthetic_tumors_and_keep_their_organ_label(samples, monkeypatch):
    from training import synthetic_tumors
    from training.data import ORGAN_SYNTHETIC_CLASSES
    from tags.preprocessing import normalize_hu

    cfg = TrainConfig(datasets=[str(samples["lits117"]), str(samples["totalseg"])], out="unused", **TINY)
    mcfg = model_config_for(cfg, text_dim=384)
    cases = load_training_cases([read_dataset(samples[k]) for k in ("lits117", "totalseg")], mcfg)
    calls, call = [], synthetic_tumors.SynthesizeLiverTumors.__call__

    def recorded(self, image, liver, spacing, *args, **kwargs):
        out = call(self, image, liver, spacing, *args, **kwargs)
        calls.append((self.choices, np.array(image), np.array(liver), out[0], list(self.tumors)))
        return out

    monkeypatch.setattr(synthetic_tumors.SynthesizeLiverTumors, "__call__", recorded)
    sampling = SamplingConfig(organ_fraction=1.0, organ_synthetic_fraction=1.0, phase_probability=0.0)
    rng = np.random.default_rng(0)
    seen = {"healthy": 0, "tumor case": 0}
    for _ in range(12):
        n = len(calls)
        s = draw_sample(cases, mcfg.targets, mcfg, rng, sampling=sampling, img_size=128, mask_size=256)
        assert s.target.name == "liver"
        if len(calls) == n:  # the LiTS case labels tumors: its liver is left as it is
            seen["tumor case"] += 1
            continue
        seen["healthy"] += 1
        choices, before, liver, after, tumors = calls[-1]
        assert choices == ORGAN_SYNTHETIC_CLASSES and tumors
        changed = after != before
        assert changed.any() and not (changed & ~liver).any()
        assert np.array_equal(s.label[0].numpy() > 0.5, liver)  # the organ label is unchanged
        assert torch.allclose(s.image[0], torch.from_numpy(normalize_hu(after, mcfg.preprocessing.hu_window)))
    assert seen["healthy"] and seen["tumor case"], seen


def test_the_demo_recipes_organ_network(samples, tmp_path, monkeypatch):
    """tags-train demo's organ network: the liver target only, no adapters trained or run,
    exported as a model folder that a demo model nests (near_union); a finished run is not
    trained again."""
    from training import demo

    monkeypatch.setattr(demo, "ORGAN_NETWORK_STEPS", 2)
    folder, seconds = demo.train_organ_network(samples, tmp_path)
    loaded = load_model_folder(folder)
    assert [t.name for t in loaded.config.targets] == ["liver"] and not loaded.config.adapter.for_organs
    assert loaded.metadata["training"]["steps"] == 2 and not loaded.metadata["training"]["train_config"]["train_adapters"]
    assert seconds > 0 and "organ pass of the demo model" in (folder / CARD).read_text()
    metrics = (tmp_path / demo.ORGAN_NETWORK / "metrics.jsonl").read_text()
    assert demo.train_organ_network(samples, tmp_path)[1] == seconds
    assert (tmp_path / demo.ORGAN_NETWORK / "metrics.jsonl").read_text() == metrics
    assert demo.ORGAN_PASS == "near_union" and demo.ORGAN_NEAR_MM > 0

"""Training precision and memory options: bf16 only where the device has it natively, fp16 with
loss scaling on older GPUs (never on the CPU), and activation checkpointing that changes memory,
not gradients."""

from __future__ import annotations

import pytest
import torch

from helpers import random_text, small_config
from tags.device import default_precision
from tags.network import build_tags
from training.train import TrainConfig, checkpoint_activations, loss_scaler, optimizer_step, training_precision


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_gpus_without_native_bf16_get_fp16(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16: fp16 there; A100 (8.0) and H100 (9.0): bf16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert default_precision(torch.device("cuda", 0)) == expected
    assert training_precision(TrainConfig(datasets=[], out=""), torch.device("cuda", 0)) == expected


def test_fp16_training_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device"):
        training_precision(TrainConfig(datasets=[], out="", precision="fp16"), torch.device("cpu"))


def test_loss_scaler_is_a_pass_through_outside_fp16():
    """bf16 / fp32: the step with the scaler equals the plain one (backward, clip, step)."""
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 2)
    b = torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 4)
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=0.1), torch.optim.AdamW(b.parameters(), lr=0.1)
    scaler = loss_scaler(torch.device("cpu"), "fp32")
    assert not scaler.is_enabled()
    optimizer_step((a(x) ** 2).sum() * 100, opt_a, scaler, clip=1.0)
    opt_b.zero_grad()
    ((b(x) ** 2).sum() * 100).backward()
    torch.nn.utils.clip_grad_norm_(list(b.parameters()), 1.0)
    opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_activation_checkpointing_keeps_the_gradients():
    config = small_config()
    torch.manual_seed(0)
    plain = build_tags(config).train()
    wrapped = build_tags(config).train()
    wrapped.load_state_dict(plain.state_dict())
    assert checkpoint_activations(wrapped) > 0
    text = random_text(config)["liver"][None]
    x = torch.rand(1, 1, *config.organ_roi_size, generator=torch.Generator().manual_seed(1))
    for net in (plain, wrapped):
        net(x, text, None, None).float().square().mean().backward()
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(plain.named_parameters(), wrapped.parameters())
             if p.requires_grad]
    assert grads and all(g is not None for _, g, _ in grads)
    for name, g, h in grads:
        assert torch.allclose(g, h, atol=1e-6, rtol=1e-5), name
    assert set(plain.state_dict()) == set(wrapped.state_dict())  # nothing added to the checkpoint

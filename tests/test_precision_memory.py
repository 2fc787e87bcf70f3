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


def _close(g: torch.Tensor, h: torch.Tensor) -> bool:
    """Equal to fp32 rounding relative to the tensor's largest entry."""
    return bool((g - h).abs().max() <= 1e-4 * g.abs().max() + 1e-6)


def test_activation_checkpointing_keeps_the_gradients():
    config = small_config()
    torch.manual_seed(0)
    plain = build_tags(config).train()
    wrapped = build_tags(config).train()
    wrapped.load_state_dict(plain.state_dict())
    assert checkpoint_activations(wrapped, decode_chunk=3) > 0  # the 8 slices decoded in chunks of 3, 3 and 2
    text = random_text(config)["liver"][None]
    x = torch.rand(1, 1, *config.organ_roi_size, generator=torch.Generator().manual_seed(1))
    for net in (plain, wrapped):
        net(x, text, None, None).float().square().mean().backward()
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(plain.named_parameters(), wrapped.parameters())
             if p.requires_grad]
    assert grads and all(g is not None for _, g, _ in grads)
    for name, g, h in grads:  # the same to float rounding (chunks sum their gradients in another order)
        assert _close(g, h), (name, float((g - h).abs().max()), float(g.abs().max()))
    assert set(plain.state_dict()) == set(wrapped.state_dict())  # nothing added to the checkpoint


def test_fused_attention_keeps_outputs_and_gradients_and_drops_the_attention_maps():
    """TinyViT's attention through the fused kernel: the same output and adapter gradients as
    upstream (train mode), the same eval output, nothing added to the weights, and autograd
    keeps less for backward (no per-window attention map)."""
    import copy

    from training.fused_attention import fused_attention

    config = small_config()
    torch.manual_seed(0)
    plain = build_tags(config).train()
    fused = copy.deepcopy(plain)
    n = fused_attention(fused)
    assert n == sum(1 for m in plain.modules() if type(m).__name__ == "Attention" and hasattr(m, "attention_bias_idxs"))
    assert n > 0 and fused_attention(fused) == 0  # switched once
    text = random_text(config)["liver"][None]
    x = torch.rand(1, 1, *config.organ_roi_size, generator=torch.Generator().manual_seed(1))
    kept = {}
    for name, net in (("plain", plain), ("fused", fused)):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(x, text, None, None)
        out.float().square().mean().backward()
        kept[name] = total[0]
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(plain.named_parameters(), fused.parameters()) if p.requires_grad]
    adapter_grads = [g for n, g, _ in grads if n in plain.adapter_keys]
    assert adapter_grads and all(g is not None for g in adapter_grads)
    assert any(g.abs().sum() > 0 for g in adapter_grads)  # (their zero-initialised output layers)
    for name, g, h in grads:  # the same to float rounding (another order of the sums)
        assert _close(g, h), (name, float((g - h).abs().max()), float(g.abs().max()))
    assert kept["fused"] < kept["plain"]
    plain.eval(), fused.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x, text, None, None), fused(x, text, None, None), atol=1e-5)
    assert set(plain.state_dict()) == set(fused.state_dict())


def test_validation_copy_drops_the_training_wrappers():
    """Validation runs a copy of the training network as an exported folder would load it: no
    checkpointed blocks or decoder chunks, no fused attention; the same outputs."""
    from training.fused_attention import fused_attention
    from training.monitor import inference_copy

    config = small_config()
    torch.manual_seed(0)
    net = build_tags(config).train()
    reference = build_tags(config).eval()
    reference.load_state_dict(net.state_dict())
    fused_attention(net)
    checkpoint_activations(net)
    copy = inference_copy(net)
    assert not copy.training and net.training
    assert all("forward" not in m.__dict__ and "decode_slices" not in m.__dict__ for m in copy.modules())
    assert "decode_slices" in net.__dict__  # the training network keeps its wrappers
    text = random_text(config)["liver"][None]
    x = torch.rand(1, 1, *config.organ_roi_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(copy(x, text, None, None), reference(x, text, None, None), atol=1e-5)

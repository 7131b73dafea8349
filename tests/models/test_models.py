"""Every registered variant builds and trains a step; LM incremental decoding equals a full
forward."""

import json

import pytest
import torch

from models import create_model, get_config, list_models
from models.checkpoint import (
    DatasetFacts,
    init_from,
    load_checkpoint,
    resize_pos_embed,
    save_checkpoint,
)
from models.config import config_from_dict
from models.vit import window_mask

TINY = {"depth": 2, "dim": 32, "heads": 2}


def tiny_input(cfg):
    if cfg.family == "lm":
        return torch.randint(0, cfg.vocab_size, (2, 12))
    return torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("attention", ["neutreno", "softmax"])
def test_variant_forward_backward(name, attention):
    overrides = dict(TINY, attention=attention)
    if name in ("deit-tiny", "segmenter-tiny-ade20k"):
        overrides["img_size"] = 64  # same architecture, a tiny input
    if name.startswith("segmenter"):
        overrides["decoder_heads"] = 2
    model = create_model(name, **overrides)
    cfg = model.cfg
    x = tiny_input(cfg)
    out = model(x)
    logits = out.logits if cfg.family == "lm" else out
    if cfg.family == "lm":
        assert logits.shape == (2, 12, cfg.vocab_size)
    elif cfg.family == "segmenter":
        assert logits.shape == (2, cfg.num_classes, cfg.img_size, cfg.img_size)
    else:
        assert logits.shape == (2, cfg.num_classes)
    logits.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_registered_variants_match_the_paper_shapes():
    deit = get_config("deit-tiny")
    assert (deit.img_size, deit.patch_size, deit.dim, deit.depth, deit.heads) == (
        224,
        16,
        192,
        12,
        3,
    )
    wt = get_config("lm-wt103-small")
    assert (wt.depth, wt.dim, wt.heads, wt.lam) == (16, 128, 8, 0.4)
    seg = get_config("segmenter-fashion")
    assert (seg.img_size, seg.num_classes) == (64, 11)
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet-50")


def test_lm_incremental_decoding_equals_full_forward():
    torch.manual_seed(0)
    model = create_model("lm-kjv", **TINY).eval()
    idx = torch.randint(0, 4096, (2, 16))
    full = model(idx).logits
    out = model(idx[:, :5])
    steps = [out.logits]
    for t in range(5, 16):  # token by token through the KV cache
        out = model(idx[:, t : t + 1], past=out.presents)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert out.presents[0][0].shape == (2, 2, 16, 16)


def test_lm_left_padding_gives_unpadded_result():
    torch.manual_seed(0)
    model = create_model("lm-kjv", **TINY).eval()
    idx = torch.randint(0, 4096, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # sequence 1 is 6 real tokens, left padded
    padded = model(idx, attention_mask=mask).logits
    alone = model(idx[1:, 4:]).logits
    torch.testing.assert_close(padded[1:, 4:], alone, atol=1e-5, rtol=1e-5)


def test_lm_greedy_uses_cache_consistently():
    torch.manual_seed(0)
    model = create_model("lm-kjv", **TINY).eval()
    prompt = torch.randint(0, 4096, (1, 6))
    out = model.greedy(prompt, 8)
    assert out.shape == (1, 14)
    for t in range(6, 14):  # each greedy token is the argmax of a full forward over its prefix
        assert out[0, t] == model(out[:, :t]).logits[0, -1].argmax()


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("lm-kjv", **TINY).eval()
    facts = DatasetFacts("a test corpus", eos_token="<eos>")
    save_checkpoint(tmp_path, model, model.cfg, facts, metrics={"test_bpc": 1.5})
    config = json.loads((tmp_path / "config.json").read_text())
    assert DatasetFacts.load(tmp_path) == facts
    assert config["family"] == "lm" and config["depth"] == 2
    loaded, cfg = load_checkpoint(tmp_path)
    idx = torch.randint(0, 4096, (1, 8))
    torch.testing.assert_close(loaded(idx).logits, model(idx).logits)
    assert loaded.head.weight is loaded.tok_emb.weight  # still tied after loading
    with pytest.raises(ValueError, match="unknown lm config fields"):
        config_from_dict({**config, "flash": True})


def test_classifier_initialises_the_segmenter_encoder(tmp_path):
    torch.manual_seed(0)
    vit = create_model("vit-fashion", depth=2, stem="conv")
    save_checkpoint(tmp_path, vit, vit.cfg, DatasetFacts("test"))
    seg = create_model("segmenter-fashion", depth=2, stem="conv")
    copied = init_from(seg, tmp_path)
    assert all(name.startswith("encoder.") for name in copied)
    assert not any("head" in name for name in copied)
    for name, tensor in seg.encoder.state_dict().items():
        if name != "pos_embed":
            torch.testing.assert_close(tensor, vit.state_dict()[name], msg=name)
    pos = seg.encoder.pos_embed  # (1, 1 + 16*16, 64) resized from (1, 1 + 7*7, 64)
    assert pos.shape == (1, 257, 64)
    torch.testing.assert_close(pos[:, 0], vit.pos_embed[:, 0])
    with pytest.raises(ValueError, match="the model needs"):
        init_from(create_model("segmenter-fashion", depth=2, dim=32, heads=2), tmp_path)


def test_resize_pos_embed_keeps_a_constant_grid_constant():
    pos = torch.cat([torch.zeros(1, 1, 4), torch.ones(1, 9, 4)], dim=1)  # cls + 3x3 grid
    resized = resize_pos_embed(pos, 1 + 36)
    assert resized.shape == (1, 37, 4)
    torch.testing.assert_close(resized[:, 1:], torch.ones(1, 36, 4))
    with pytest.raises(ValueError, match="square grid"):
        resize_pos_embed(pos, 1 + 10)


def test_conv_stem_keeps_the_token_grid_and_rejects_bad_patch_sizes():
    vit = create_model("vit-fashion", depth=1, stem="conv")
    assert vit.patch_embed(torch.zeros(1, 1, 28, 28)).shape == (1, 64, 7, 7)
    assert vit(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="power-of-two"):
        create_model("vit-fashion", depth=1, stem="conv", patch_size=7)
    with pytest.raises(ValueError, match="stem must be"):
        create_model("vit-fashion", depth=1, stem="pixels")


def test_window_mask_lets_patches_see_only_their_neighbourhood_and_the_cls_token():
    mask = window_mask(grid=4, radius=1)  # (1 + 16, 1 + 16)
    assert mask.shape == (17, 17)
    assert mask[0].all() and mask[:, 0].all()  # the cls token sees and is seen by all
    corner = mask[1, 1:].reshape(4, 4)  # what patch (0, 0) sees
    assert corner.tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False] * 4,
        [False] * 4,
    ]
    assert mask[1 + 5, 1:].sum() == 9  # an interior patch sees its 3x3 neighbourhood
    assert torch.equal(mask, mask.T)


@pytest.mark.parametrize("window", [0, 1])
def test_windowed_layer_ignores_far_patches(window):
    """After one block, patch (0, 0) depends on a far patch's pixels only with global attention."""
    torch.manual_seed(0)
    vit = create_model("vit-fashion", depth=1, img_size=16, patch_size=4, window=window).eval()
    x = torch.randn(1, 1, 16, 16)
    far = x.clone()
    far[..., 12:, 12:] += 1.0  # only patch (3, 3) changes
    with torch.no_grad():
        a, b = vit.forward_features(x).x, vit.forward_features(far).x  # (1, 1 + 16, dim)
    assert not torch.allclose(a[:, 16], b[:, 16])  # the changed patch itself
    assert torch.allclose(a[:, 1], b[:, 1]) == (window == 1)


def test_pixel_refiner_starts_as_the_identity_on_a_trained_segmenter(tmp_path):
    """A refiner added to a trained segmenter leaves its output unchanged until it trains."""
    torch.manual_seed(0)
    plain = create_model("segmenter-fashion", depth=2, stem="conv").eval()
    save_checkpoint(tmp_path, plain, plain.cfg, DatasetFacts("test"))
    refined = create_model("segmenter-fashion", depth=2, stem="conv", refine_channels=8).eval()
    copied = set(init_from(refined, tmp_path))
    assert copied == set(plain.state_dict()) and not any(n.startswith("refiner.") for n in copied)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(refined(x), plain(x))
    refined.refiner.conv2.weight.data.normal_()
    with torch.no_grad():
        assert not torch.allclose(refined(x), plain(x))

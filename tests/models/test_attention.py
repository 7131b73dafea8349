"""fidelity_attention against an explicit float64 reference; fused vs export-safe paths; V0
wiring."""

import math

import pytest
import torch

from models import create_model
from models.attention import attention_core, causal_mask, fidelity_attention


def reference(q, k, v, v0, lam, causal):
    """softmax(q k^T / sqrt(d) [+causal]) v + lam (v0 - v_cur), written out in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    tq, tk = q.shape[-2], k.shape[-2]
    if causal:
        for i in range(tq):
            for j in range(tk):
                if j > tk - tq + i:
                    scores[..., i, j] = float("-inf")
    out = torch.softmax(scores, -1) @ v
    if v0 is not None:
        out = out + lam * (v0.double() - v[..., tk - tq :, :])
    return out


@pytest.mark.parametrize("lam", [0.0, 0.4, 0.6])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_v0", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_float64_reference(lam, causal, with_v0, fused):
    g = torch.Generator().manual_seed(0)
    q, k, v, v0 = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(4))
    out = fidelity_attention(q, k, v, v0 if with_v0 else None, lam=lam, causal=causal, fused=fused)
    ref = reference(q, k, v, v0 if with_v0 else None, lam, causal)
    assert out.shape == (2, 3, 7, 8)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)


def test_fidelity_term_changes_output_by_lam_times_difference():
    g = torch.Generator().manual_seed(1)
    q, k, v, v0 = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(4))
    plain = fidelity_attention(q, k, v)
    with_term = fidelity_attention(q, k, v, v0, lam=0.6)
    torch.testing.assert_close(with_term - plain, 0.6 * (v0 - v))


@pytest.mark.parametrize("causal", [False, True])
def test_fused_equals_export_safe_with_past_and_mask(causal):
    g = torch.Generator().manual_seed(2)
    q, v0 = torch.randn(2, 2, 3, 8, generator=g), torch.randn(2, 2, 3, 8, generator=g)
    k, v = torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g)
    mask = torch.ones(2, 1, 3, 9, dtype=torch.bool)
    mask[1, :, :, :2] = False  # key padding in the second sequence
    a = fidelity_attention(q, k, v, v0, lam=0.4, causal=causal, mask=mask, fused=True)
    b = fidelity_attention(q, k, v, v0, lam=0.4, causal=causal, mask=mask, fused=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    ref = reference(q, k, v, v0, 0.4, causal)  # sequence 0 has no padding
    torch.testing.assert_close(a[0].double(), ref[0], atol=2e-6, rtol=1e-5)
    ref_padded = reference(q[1:], k[1:, :, 2:], v[1:, :, 2:], v0[1:], 0.4, causal)
    torch.testing.assert_close(a[1:].double(), ref_padded, atol=2e-6, rtol=1e-5)


def test_causal_mask_is_bottom_right_aligned():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_attention_core_concatenates_past_and_uses_current_v_for_fidelity():
    g = torch.Generator().manual_seed(3)
    q, k, v, v0 = (torch.randn(1, 2, 1, 4, generator=g) for _ in range(4))
    past = (torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 2, 4, 4, generator=g))
    out, (k_all, v_all) = attention_core(q, k, v, v0, lam=0.5, causal=True, past=past)
    assert k_all.shape == v_all.shape == (1, 2, 5, 4)
    torch.testing.assert_close(k_all[:, :, -1:], k)
    ref = reference(q, k_all, v_all, v0, 0.5, True)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)


def _capture_attention_io(model):
    """Hook every Attention module: record the v0 it received and the v it returned."""
    seen = []

    def hook(module, args, kwargs, output):
        v0 = args[1] if len(args) > 1 else kwargs.get("v0")
        seen.append((v0, output[1]))

    handles = [b.attn.register_forward_hook(hook, with_kwargs=True) for b in model.blocks]
    return seen, handles


@pytest.mark.parametrize("name", ["vit-fashion", "lm-kjv"])
def test_v0_is_layer0_values_and_layer0_has_no_fidelity(name):
    torch.manual_seed(0)
    model = create_model(name, depth=4).eval()
    x = torch.randn(2, 1, 28, 28) if name == "vit-fashion" else torch.randint(0, 4096, (2, 9))
    seen, handles = _capture_attention_io(model)
    model(x)
    for h in handles:
        h.remove()
    assert seen[0][0] is None  # layer 0 gets no v0
    layer0_v = seen[0][1]
    for v0, _ in seen[1:]:
        assert v0 is layer0_v


def test_softmax_baseline_has_zero_lam_and_neutreno_uses_variant_lam():
    assert all(b.attn.lam == 0.0 for b in create_model("vit-fashion", attention="softmax").blocks)
    assert all(b.attn.lam == 0.6 for b in create_model("vit-fashion").blocks)
    assert all(b.attn.lam == 0.4 for b in create_model("lm-kjv").blocks)
    with pytest.raises(ValueError, match="attention must be"):
        create_model("vit-fashion", attention="linear")

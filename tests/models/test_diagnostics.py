"""Over-smoothing diagnostics: per-layer mean pairwise cosine similarity."""

import itertools

import torch

from models import create_model
from models.diagnostics import layer_similarity, model_similarity, token_similarity


def brute_force(x):
    u = torch.nn.functional.normalize(x.double(), dim=-1)
    pairs = [(u[i] @ u[j]).item() for i, j in itertools.permutations(range(len(u)), 2)]
    return sum(pairs) / len(pairs)


def test_matches_pairwise_definition():
    x = torch.randn(3, 7, 5)
    got = token_similarity(x)
    for b in range(3):
        assert abs(got[b].item() - brute_force(x[b])) < 1e-5


def test_identical_tokens_give_one_and_opposite_give_minus_one():
    same = torch.randn(1, 1, 8).expand(2, 6, 8)
    torch.testing.assert_close(token_similarity(same), torch.ones(2))
    v = torch.randn(8)
    torch.testing.assert_close(token_similarity(torch.stack([v, -v])[None]), -torch.ones(1))


def test_weights_exclude_padding():
    x = torch.randn(1, 6, 4)
    w = torch.tensor([[0, 0, 1, 1, 1, 1]])
    assert abs(token_similarity(x, w).item() - brute_force(x[0, 2:])) < 1e-5
    assert token_similarity(x[:, :1]).item() == 0.0  # one token: no pairs


def test_one_value_per_layer_in_range():
    torch.manual_seed(0)
    model = create_model("vit-fashion", depth=5)
    values = model_similarity(model, torch.randn(4, 1, 28, 28))
    assert len(values) == 5 and all(-1.0 <= v <= 1.0 for v in values)
    logits, sim = model.forward_with_similarity(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10) and sim.shape == (2, 5)
    hidden = [torch.randn(2, 4, 3) for _ in range(3)]
    assert layer_similarity(hidden).shape == (2, 3)

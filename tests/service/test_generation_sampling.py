"""service.engine.sampling: every accepted parameter value samples a real token (issue 19)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.engine.sampling import Sampler, SamplingParams

TEMPERATURES = [5e-324, 1e-310, 1e-300, 1e-30, 1e-3, 0.7, 2.0]


def _logits(kind: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    if kind == "normal":
        return rng.normal(0, 3, 512).astype(np.float32)
    if kind == "extreme":  # float32's range at both ends
        values = rng.normal(0, 3, 512).astype(np.float32)
        values[[7, 9]] = [3e38, -3e38]
        return values
    return np.full(512, 1.5, np.float32)  # all tied


@pytest.mark.parametrize("kind", ["normal", "extreme", "tied"])
def test_every_accepted_value_gives_a_token(kind: str) -> None:
    logits = _logits(kind)
    for temperature, top_k, top_p in itertools.product(
        TEMPERATURES, [0, 1, 3, 10_000], [1e-300, 0.5, 1.0]
    ):
        token = Sampler(SamplingParams(temperature, top_k, top_p, seed=1))(logits)
        assert 0 <= token < logits.shape[0]


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 1e-300])
def test_tiny_temperature_is_greedy(temperature: float) -> None:
    for kind in ("normal", "extreme"):
        logits = _logits(kind)
        picks = {Sampler(SamplingParams(temperature, seed=s))(logits) for s in range(20)}
        assert picks == {int(np.argmax(logits))}

"""Similarity telemetry on live batches: the shipped bundles' sessions are gated, unsampled
vision batches and LM decode steps skip the similarity subgraph (NaN out), sampled batches set
the gauge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.service_helpers import ROOT, make_settings

from service.engine.core import SimilaritySampler
from service.engine.runtime import ModelRuntime
from service.metrics import Metrics

FOLDER = ROOT / "model_repository/fashion-classifier/1"


def test_only_sampled_batches_compute_similarity() -> None:
    manifest = json.loads((FOLDER / "manifest.json").read_text())
    model = ModelRuntime(FOLDER, manifest, make_settings(ROOT / "model_repository"))
    metrics = Metrics()
    sampler = SimilaritySampler(model.name, metrics, every=2, gated=True)
    feeds = {
        "pixel_values": np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    }
    skipped = model.run(sampler.feeds(feeds))
    sampler(skipped)
    assert np.isnan(skipped["token_similarity"]).all()
    assert (
        metrics.registry.get_sample_value(
            "neutreno_token_similarity", {"model": model.name, "layer": "0"}
        )
        is None
    )
    sampled = model.run(sampler.feeds(feeds))
    sampler(sampled)
    np.testing.assert_allclose(sampled["logits"], skipped["logits"], atol=1e-6)
    layer0 = metrics.registry.get_sample_value(
        "neutreno_token_similarity", {"model": model.name, "layer": "0"}
    )
    assert layer0 == pytest.approx(float(sampled["token_similarity"][:, 0].mean()))


def test_fused_attention_off_runs_the_bundle_as_shipped() -> None:
    """NEUTRENO_FUSED_ATTENTION=false: no rewrite, so no telemetry flag and the same outputs."""
    manifest = json.loads((FOLDER / "manifest.json").read_text())
    repo = ROOT / "model_repository"
    fused = ModelRuntime(FOLDER, manifest, make_settings(repo))
    shipped = ModelRuntime(FOLDER, manifest, make_settings(repo, fused_attention=False))
    assert not shipped.session.get_overridable_initializers()
    feeds = {"pixel_values": np.ones((2, 1, 28, 28), np.float32)}
    a, b = fused.run(feeds), shipped.run(feeds)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4)
    np.testing.assert_allclose(a["token_similarity"], b["token_similarity"], atol=1e-5)

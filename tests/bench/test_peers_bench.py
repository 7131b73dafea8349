"""The peer report: one row per measured point, ratio tables only when NeuTRENO was measured."""

import argparse
from pathlib import Path

from bench.peers_bench import Point, markdown

ARGS = argparse.Namespace(
    model="fashion-classifier",
    checkpoint=Path("checkpoints/c"),
    repository=Path("model_repository"),
    version=1,
    duration=15.0,
    warmup=3.0,
    max_batch_size=32,
    batch_wait_ms=2.0,
)


def point(system: str, clients: int, rate: float, p99: float) -> Point:
    return Point(system, clients, rate, p99 / 2, p99 / 1.5, p99, 0, 1.0)


def test_ratio_table_compares_throughput_at_equal_client_counts():
    points = [
        point("neutreno", 1, 200.0, 10.0),
        point("neutreno", 8, 500.0, 30.0),
        point("ray-serve", 1, 50.0, 40.0),
        point("ray-serve", 8, 100.0, 90.0),
    ]
    text = markdown(points, {"neutreno": 1.5, "ray-serve": 9.0}, ARGS)
    assert "| 1 | 4.00x | 10.00 | 40.00 |" in text
    assert "| 8 | 5.00x | 30.00 | 90.00 |" in text
    assert "| best | 5.00x (500 vs 100 req/s) | 30.00 (c=8) | 90.00 (c=8) |" in text
    assert "neutreno 1.5 s, ray-serve 9.0 s" in text


def test_report_without_neutreno_lists_the_peers_and_no_ratios():
    points = [point("torch-eager", 1, 80.0, 20.0), point("ray-serve", 1, 50.0, 40.0)]
    text = markdown(points, {"torch-eager": 2.0, "ray-serve": 9.0}, ARGS)
    assert "| torch-eager | 1 | 80.0 |" in text and "| ray-serve | 1 | 50.0 |" in text
    assert "throughput" not in text

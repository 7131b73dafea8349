"""`neutreno bench grpc`'s transport floors: each library's do-nothing server answers the load
generator's real requests, and its CPU is read from its own process."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench.grpc_bench import TRANSPORTS, Target, bodies, floors


def test_floors_answer_every_request() -> None:
    arrays = [np.zeros((1, 1, 28, 28), np.float32)]
    targets = [
        Target(t, "127.0.0.1", 0, bodies(t, "fashion-classifier", "pixel_values", arrays))
        for t in TRANSPORTS
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        points = floors(pool, targets, procs=1, clients=2, seconds=1.0)
    assert [p.transport for p in points] == ["HTTP floor", "gRPC floor"]
    for point in points:
        assert point.ok > 10 and point.failed == 0
        assert 0 < point.server_cpu_s < 2.0

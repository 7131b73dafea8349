"""The engine process spoken to straight through its socket (service.wire), as a front end does:
replies of one batch come back grouped, generation comes back as token ids once per step, and
the sequences of a front end that goes silent (dead) are cancelled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from support.generation_helpers import NAME, add_lm, tiny_lm

from bench.engine_bench import EngineDriver
from bench.live_server import ROOT
from service import wire
from service.engine.server import EngineServer
from service.messages import GenerateRequest


@pytest.fixture(scope="module")
def driver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineDriver]:
    repo = tmp_path_factory.mktemp("repo")
    add_lm(repo, tiny_lm(request.config, tmp_path_factory.mktemp("lm")))
    engine = EngineDriver(repo, ROOT, {"max_running_sequences": 2})
    try:
        engine.wait_started()
        yield engine
    finally:
        engine.close()


def _status(driver: EngineDriver) -> dict:
    driver.send({"op": "status"})
    while True:
        header, _ = driver.receive()
        if header["op"] == "status":
            return header["status"]


def test_one_step_message_carries_every_stream_as_ids(driver: EngineDriver) -> None:
    """Two streams long enough to overlap (a tiny model's 5 steps may all run before the
    second request is read): their ids share step messages."""
    for _ in range(2):
        request = GenerateRequest(0, (5, 6, 7), 40, ignore_eos=True)
        driver.send({"op": "generate", "model": NAME, "requests": [wire.request_to_wire(request)]})
    steps, finished = [], 0
    while finished < 2:
        header, _ = driver.receive()
        if header["op"] == "step":
            outputs = wire.outputs_from_wire(header["out"])
            steps.append(outputs)
            finished += sum(o.finish == "length" for o in outputs)
    tokens = [t for step in steps for o in step for t in o.tokens]
    assert len(tokens) == 80 and all(isinstance(t, int) for t in tokens)
    assert any(len({o.rid for o in step}) == 2 for step in steps)  # streams share messages
    assert len(steps) < len(tokens)  # a message per step at most (steps may share one), not per id


def test_a_silent_front_end_loses_its_sequences(driver: EngineDriver) -> None:
    """A second front end queues 200 long sequences (2 run at a time: at least 25,000 steps),
    then goes silent as a killed process does: within SILENT_AFTER_S and a tick the engine has
    cancelled them all; before that it keeps them; the first front end is unaffected."""
    import zmq

    dead = driver.zmq.socket(zmq.DEALER)
    dead.connect(driver.address)
    request = GenerateRequest(0, (5, 6), 250, ignore_eos=True)
    body = {"op": "generate", "model": NAME, "requests": [wire.request_to_wire(request)]}
    for rid in range(1, 201):
        dead.send_multipart(wire.encode({**body, "id": rid}))
    deadline = time.monotonic() + 10
    while _status(driver)["depth"].get(NAME, 0) < 150:
        assert time.monotonic() < deadline, "the sequences were never queued"
        time.sleep(0.05)
    dead.close(0)  # it says nothing more
    silent_at = time.monotonic()
    time.sleep(EngineServer.SILENT_AFTER_S - 2)
    assert _status(driver)["depth"][NAME] > 100  # kept while it might come back
    while (status := _status(driver))["depth"][NAME] or status["running"][NAME]:
        assert time.monotonic() - silent_at < EngineServer.SILENT_AFTER_S + 3, "still queued"
        time.sleep(0.2)


def test_grouped_results_and_unknown_model_errors(driver: EngineDriver) -> None:
    ids = np.array([[5, 6, 7]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    rid = driver.send({"op": "infer", "model": "no-such-model"}, feeds)
    while True:
        header, _ = driver.receive()
        if header["op"] == "results":
            break
    (item,) = header["items"]
    assert item[0] == rid and item[1]["type"] == "model_not_ready"


def test_messages_sent_while_the_model_thread_sends_are_all_read(driver: EngineDriver) -> None:
    """The model's thread sends every step on the socket the loop reads; a send can consume
    the edge of the socket's FD that should wake the loop for a message just in. Status
    requests, one after another while streams step (a new 250-token stream starts whenever one
    ends) until at least 300 of each went by, must each be answered (a lost wake-up leaves the
    request unread: no answer in 5 s)."""
    request = GenerateRequest(0, (5, 6), 250, ignore_eos=True)
    body = {"op": "generate", "model": NAME, "requests": [wire.request_to_wire(request)]}
    driver.send(body)
    answered, tokens = 0, 0
    while answered < 300 or tokens < 300:
        rid = driver.send({"op": "status"})
        while True:
            assert driver.sock.poll(5000), f"status {answered + 1} never answered"
            header, _ = driver.receive()
            if header["op"] == "status" and header["id"] == rid:
                break
            if header["op"] == "step":
                for out in wire.outputs_from_wire(header["out"]):
                    assert out.error is None, out.error
                    tokens += len(out.tokens)
                    if out.finish is not None:
                        driver.send(body)
            assert header["op"] != "results" or header["items"][0][1] is None, header
        answered += 1
    while _status(driver)["running"].get(NAME, 0):
        time.sleep(0.05)

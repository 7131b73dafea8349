"""Hardening round 2 (issue 28), the repository side, in-process: model names on the
repository API checked before the disk or the failure table (cases 2, 3), failure records tied
to folders that exist (case 2), a poller that survives files coming and going and fails
/readyz if it ever stops (case 4), and bundle loading that follows no link out and reads no
oversized or unencodable manifest (cases 12 and 1, the load-time half)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.service_helpers import make_settings

from export.bundle import MANIFEST_FILE, MODEL_FILE, BundleError, load_bundle
from service import create_app
from service.engine import core as engine_core
from service.engine.repository import folder_signatures

MODEL = "fashion-classifier"
REPO_API = "/v2/repository/models"


@pytest.fixture()
def repo(repository: Path, tmp_path: Path) -> Path:
    """A private copy of the test repository (tests add, break and remove folders)."""
    return Path(shutil.copytree(repository, tmp_path / "repo"))


@pytest.fixture()
def explicit(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(repo, model_control="explicit"))) as c:
        yield c


def test_hostile_names_answered_400_at_once_and_leave_readiness_alone(
    explicit: TestClient,
) -> None:
    """Issue: `..` (as %2e%2e) got 400 but a failure record that kept /readyz 503 for good;
    `.` and a 300-character name killed the engine's task (KeyError, ENAMETOOLONG) and the
    client waited 32 s for a 504."""
    for name in ("%2e%2e", "%2e", "x" * 300, "%E2%80%A8", "a%00b", ".hidden"):
        for op in ("load", "unload"):
            started = time.perf_counter()
            response = explicit.post(f"{REPO_API}/{name}/{op}")
            assert response.status_code == 400, (name, op, response.text)
            assert "not valid" in response.json()["error"]
            assert time.perf_counter() - started < 1.0
    assert explicit.get("/readyz").status_code == 200
    assert explicit.get("/v2/health/ready").status_code == 200


def test_failure_record_follows_its_folder(repo: Path, explicit: TestClient) -> None:
    """Issue: a folder that failed to load and was then deleted kept /readyz 503 until a
    restart, and unloading its name gave 404."""
    broken = repo / "broken" / "1"
    shutil.copytree(repo / MODEL / "1", broken)
    (broken / MODEL_FILE).write_bytes(b"not an onnx graph")
    assert explicit.post(f"{REPO_API}/broken/load").status_code == 400
    assert explicit.get("/readyz").status_code == 503
    assert explicit.post(f"{REPO_API}/broken/unload").status_code == 200  # forgets it
    assert explicit.get("/readyz").status_code == 200
    assert explicit.post(f"{REPO_API}/broken/load").status_code == 400
    shutil.rmtree(repo / "broken")
    assert explicit.get("/readyz").status_code == 200  # the folder went: no reason left
    assert explicit.post(f"{REPO_API}/broken/load").status_code == 404
    assert "broken" not in explicit.get("/readyz").json()["models"]


def test_folders_with_unservable_names_skipped(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 1 through the disk: a folder whose name is not valid UTF-8 (Python sees a lone
    surrogate) or holds a line separator would carry unencodable or log-splitting text into
    every status; it is skipped, logged, and no failure."""
    shutil.copytree(repo / MODEL, Path(os.fsdecode(bytes(repo) + b"/bad\xff")))
    shutil.copytree(repo / MODEL, repo / "split\u2028name")
    with caplog.at_level("WARNING", logger="neutreno.service"):
        assert set(folder_signatures(repo)) == {MODEL, "fashion-segmenter"}
        with TestClient(create_app(make_settings(repo))) as c:
            assert c.get("/readyz").status_code == 200
    assert "bad\\udcff" in caplog.text and "split\\u2028name" in caplog.text


def _churn(folder: Path, stop: threading.Event) -> None:
    """rsync's way of writing: temporary files created and deleted as fast as possible."""
    i = 0
    while not stop.is_set():
        path = folder / f".tmp.{i % 50}"
        path.write_bytes(b"x")
        path.unlink()
        i += 1


def test_scan_survives_files_vanishing(
    repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue: the poller died on FileNotFoundError, without a log line, when a file vanished
    between the folder's listing and its stat (rsync into a version folder). Here the file
    is there when listed and checked, gone when its mtime is read."""
    (repo / MODEL / "1" / ".rsync-tmp").write_bytes(b"x")
    real_stat, calls = Path.stat, 0

    def stat(self: Path, **kwargs: bool) -> object:
        nonlocal calls
        if self.name == ".rsync-tmp":
            calls += 1
            if calls > 1:
                raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with caplog.at_level("INFO", logger="neutreno.service"):
        assert set(folder_signatures(repo)) == {MODEL, "fashion-segmenter"}
    assert "'.rsync-tmp' skipped" in caplog.text


def test_poller_keeps_loading_under_churn(repo: Path) -> None:
    """Files churning in one version folder while a new model folder arrives: it is loaded.
    The newcomer is copied before the churn starts (a copy taken during it would race the
    churner's own files) and moved in at once."""
    stop = threading.Event()
    churner = threading.Thread(target=_churn, args=(repo / MODEL / "1", stop))
    settings = make_settings(repo, model_control="poll", repository_poll_s=0.05)
    staged = Path(shutil.copytree(repo / MODEL, repo.parent / "staged"))
    with TestClient(create_app(settings)) as c:
        churner.start()
        try:
            time.sleep(0.5)
            staged.rename(repo / "newcomer")
            deadline = time.monotonic() + 20
            while c.get("/v2/models/newcomer/ready").status_code != 200:
                assert time.monotonic() < deadline, c.get("/readyz").json()
                time.sleep(0.1)
        finally:
            stop.set()
            churner.join()
        assert c.get("/readyz").status_code == 200


def test_poller_death_fails_readiness(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue: the dead poller left /readyz at 200 while new folders were never loaded."""
    calls = 0

    def failing(root: Path) -> dict[str, tuple[tuple[str, float], ...]]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("scan failed")
        return folder_signatures(root)

    monkeypatch.setattr(engine_core, "folder_signatures", failing)
    settings = make_settings(repo, model_control="poll", repository_poll_s=0.05)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert any("poller stopped" in r for r in c.get("/readyz").json()["reasons"])


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_FILE).read_text())


def test_bundle_files_deduplicated_and_links_refused(repo: Path, tmp_path: Path) -> None:
    """Issue: 2,001 aliases of model.onnx in `files` were each hashed (2.2 GB read); a
    symlinked manifest.json or version folder was followed out of the repository."""
    bundle = repo / MODEL / "1"
    manifest = _manifest(bundle)
    manifest["files"]["./model.onnx"] = manifest["files"][MODEL_FILE]
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="more than once"):
        load_bundle(bundle)

    outside = Path(shutil.copytree(bundle, tmp_path / "outside"))
    linked = repo / "linked" / "1"
    linked.mkdir(parents=True)
    shutil.copy(outside / MODEL_FILE, linked / MODEL_FILE)
    (linked / MANIFEST_FILE).symlink_to(outside / MANIFEST_FILE)
    with pytest.raises(BundleError, match="link"):
        load_bundle(linked)
    (repo / "elsewhere").mkdir()
    (repo / "elsewhere" / "1").symlink_to(outside, target_is_directory=True)
    assert folder_signatures(repo)["elsewhere"] == ()  # the version folder is not followed


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [2**70, "\ud800", _nested(64), float("nan")],
    ids=["int-2^70", "lone-surrogate", "depth-64", "nan"],
)
def test_manifest_values_the_wire_cannot_carry_are_refused(repo: Path, value: object) -> None:
    """Issue (case 1, load-time half): `"training": {"seed": 2**70}` or a lone surrogate
    loaded, then every engine status reply failed to encode: such a bundle is refused at
    load, naming the field."""
    bundle = repo / MODEL / "1"
    manifest = _manifest(bundle)
    manifest["training"]["seed"] = value
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"training\.seed"):
        load_bundle(bundle)


def test_oversized_manifest_refused_before_reading(repo: Path) -> None:
    """Issue: a 500 MB sparse manifest cost +1 GB and a 1 s stall to parse."""
    bundle = repo / MODEL / "1"
    with (bundle / MANIFEST_FILE).open("r+b") as f:
        f.truncate(500 << 20)  # sparse: costs no disk
    started = time.perf_counter()
    with pytest.raises(BundleError, match="bytes"):
        load_bundle(bundle)
    assert time.perf_counter() - started < 0.1

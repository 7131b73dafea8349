"""Loading a model repository: the newest healthy version serves, folder names are the served
names, /readyz names bundles (never host paths) and says what is wrong with the repository, and
the start-up log says what serves, from where, on which device, and what is not loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.service_helpers import b64, make_settings, png_bytes, start_server

from service import create_app


@pytest.fixture()
def repo(repository: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny test repository (classifier + segmenter, version 1)."""
    return Path(shutil.copytree(repository, tmp_path / "repo"))


def add_broken_version(repo: Path, name: str, version: str) -> None:
    """<name>/<version>: a copy of version 1 whose model.onnx no longer matches its sha256."""
    broken = Path(shutil.copytree(repo / name / "1", repo / name / version))
    with (broken / "model.onnx").open("ab") as f:
        f.write(b"\0")


def readyz(repo: Path) -> tuple[int, dict]:
    with TestClient(create_app(make_settings(repo))) as c:
        r = c.get("/readyz")
        return r.status_code, r.json()


def test_broken_newest_version_falls_back_to_the_newest_healthy(repo: Path, fashion) -> None:
    add_broken_version(repo, "fashion-classifier", "3")
    add_broken_version(repo, "fashion-classifier", "2")
    with TestClient(create_app(make_settings(repo))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        status = ready.json()["models"]["fashion-classifier"]
        assert status.startswith("ready (serving version 1; version 3 not loaded: sha256 mismatch")
        assert "version 2 not loaded" in status and str(repo) not in ready.text
        assert c.get("/v2/models/fashion-classifier").json()["versions"] == ["1"]
        ok = c.post(
            "/v1/models/fashion-classifier/classify", json={"image": b64(png_bytes(fashion[0][0]))}
        )
        assert ok.status_code == 200


def test_no_loadable_version_names_every_version_without_host_paths(repo: Path) -> None:
    (repo / "fashion-segmenter" / "1" / "manifest.json").write_text("{not json")
    code, body = readyz(repo)
    assert code == 503
    assert body["models"]["fashion-segmenter"].startswith(
        "version 1 not loaded: manifest.json is not valid JSON"
    )
    assert body["reasons"][0].startswith("model fashion-segmenter failed to load: version 1")
    assert body["models"]["fashion-classifier"] == "ready"
    assert str(repo) not in str(body) and str(repo.resolve()) not in str(body)


def test_a_copied_bundle_folder_serves_under_its_new_name(repo: Path, fashion) -> None:
    shutil.copytree(repo / "fashion-classifier", repo / "my-classifier")
    with TestClient(create_app(make_settings(repo))) as c:
        assert c.get("/readyz").json()["models"]["my-classifier"] == "ready"
        r = c.post(
            "/v1/models/my-classifier/classify", json={"image": b64(png_bytes(fashion[0][0]))}
        )
        assert r.status_code == 200 and r.json()["model"] == "my-classifier"


def test_empty_repository_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, body = readyz(tmp_path / "empty")
    assert code == 503 and body["models"] == {}
    assert body["reasons"] == [
        "model repository 'empty' has no model bundles; expected "
        "<model>/<version>/manifest.json (neutreno export writes them)"
    ]


@pytest.mark.parametrize(
    ("inside", "expected"),
    [
        (
            "fashion-classifier",
            "'fashion-classifier' is a model folder (it holds version folders 1)",
        ),
        ("fashion-classifier/1", "'1' is a bundle version folder"),
    ],
)
def test_a_model_folder_in_place_of_the_repository_says_so(
    repo: Path, inside: str, expected: str
) -> None:
    code, body = readyz(repo / inside)
    assert code == 503 and body["models"] == {}
    assert len(body["reasons"]) == 1 and expected in body["reasons"][0]
    assert "NEUTRENO_MODEL_REPOSITORY" in body["reasons"][0]


def test_startup_log_says_what_serves_from_where_on_which_device(repo: Path) -> None:
    add_broken_version(repo, "fashion-classifier", "2")
    (repo / "no-version").mkdir()
    live = start_server(repo, {"NEUTRENO_LOG_LEVEL": "info"})
    try:
        live.wait_ready(ready=False)  # no-version keeps it unready; the log is what is checked
    finally:
        assert live.stop() == 0
    out = live.output()
    assert (
        f"serving fashion-classifier version 1 (classification, float32) from "
        f"{(repo / 'fashion-classifier' / '1').resolve()} on cpu (CPUExecutionProvider)" in out
    ), out
    assert "model fashion-classifier version 2 not loaded" in out and "sha256 mismatch" in out
    assert "model no-version not loaded: no version folder" in out
    assert (
        f"model repository {repo.resolve()}: serving fashion-classifier, fashion-segmenter; "
        "not loaded: no-version; older version serving: fashion-classifier"
    ) in out

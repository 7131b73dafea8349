"""`neutreno export` mistakes: one line on stderr with the fix, exit 2, nothing written; an
existing version folder is replaced only with --force; the bundle's name is its folder's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.export_helpers import Exported

from export.bundle import load_bundle
from neutreno.cli import main


def checkpoint_of(exported: Exported) -> Path:
    """The tiny checkpoint the session's classifier bundle was exported from."""
    return Path(exported.bundle.manifest["training"]["checkpoint"])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("neutreno export: "), err
    return err


def test_existing_version_folder_is_refused(classifier: Exported, capsys) -> None:
    out = classifier.bundle.path
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", str(checkpoint_of(classifier)), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "already exists" in err and "--force" in err and f"{out.parent}/2" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{ckpt}", "--out", "{tmp}/repo/clf"], ["<repository>/<name>/<version>", "/clf"]),
        (
            ["{ckpt}", "--out", "{tmp}/repo/clf/1", "--name", "other"],
            ["--name other", "'clf'", "--out {tmp}/repo/other/1"],
        ),
        (
            ["{tmp}/nothing", "--out", "{tmp}/repo/clf/1"],
            ["{tmp}/nothing/config.json", "neutreno train"],
        ),
        (["{ckpt}"], ["--out", "required"]),
        (
            ["{tmp}/mixed", "--out", "{tmp}/repo/clf/1"],
            ["does not match its config", "neutreno train"],
        ),
    ],
)
def test_mistakes_are_one_line_with_the_fix(
    classifier: Exported, tmp_path: Path, capsys, argv: list[str], expected: list[str]
) -> None:
    mixed = Path(shutil.copytree(checkpoint_of(classifier), tmp_path / "mixed"))
    config = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**config, "depth": config["depth"] + 1}))

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace(
            "{ckpt}", str(checkpoint_of(classifier))
        )

    assert main(["export", *map(fill, argv)]) == 2
    err = one_line_error(capsys)
    for text in expected:
        assert fill(text) in err, err
    assert not (tmp_path / "repo").exists()


def test_force_replaces_and_reports_both_parities(
    classifier: Exported, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "repo" / "clf" / "1"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an earlier export")
    baseline = tmp_path / "baseline.onnx"
    assert (
        main(
            [
                "export",
                str(checkpoint_of(classifier)),
                "--out",
                str(out),
                "--force",
                "--softmax-baseline",
                str(baseline),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {out} (clf v1") and "max |ORT - torch|" in printed[0]
    assert "softmax baseline, max |ORT - torch| = " in printed[1] and baseline.is_file()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    training = load_bundle(out).manifest["training"]
    assert training["commands"] == ["neutreno train (test)"]
    assert training["command"] == "neutreno train (test)"

"""`neutreno export` mistakes: one line on stderr with the fix, exit 2, nothing written; an
existing version folder is replaced only with --force; the bundle's name is its folder's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.export_helpers import Exported, facts_for, sample_for

from export import cli as export_cli
from export.bundle import load_bundle
from models.checkpoint import save_checkpoint
from models.registry import build_model, get_config
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
        (
            ["{tmp}/nofacts", "--out", "{tmp}/repo/clf/1"],
            ["{tmp}/nofacts/data.json does not exist", "labels, mean, std", "neutreno train"],
        ),
        (
            ["{tmp}/badfacts", "--out", "{tmp}/repo/clf/1"],
            ["{tmp}/badfacts/data.json has 3 labels; the model has 10 classes"],
        ),
    ],
)
def test_mistakes_are_one_line_with_the_fix(
    classifier: Exported, tmp_path: Path, capsys, argv: list[str], expected: list[str]
) -> None:
    mixed = Path(shutil.copytree(checkpoint_of(classifier), tmp_path / "mixed"))
    config = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**config, "depth": config["depth"] + 1}))
    nofacts = Path(shutil.copytree(checkpoint_of(classifier), tmp_path / "nofacts"))
    (nofacts / "data.json").unlink()
    badfacts = Path(shutil.copytree(checkpoint_of(classifier), tmp_path / "badfacts"))
    facts = json.loads((badfacts / "data.json").read_text())
    (badfacts / "data.json").write_text(json.dumps({**facts, "labels": ["a", "b", "c"]}))

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


def test_labels_and_normalisation_come_from_the_checkpoint_data_facts(
    classifier: Exported, tmp_path: Path
) -> None:
    """Export copies data.json as the training task wrote it, whatever the model's shape."""
    checkpoint = Path(shutil.copytree(checkpoint_of(classifier), tmp_path / "ckpt"))
    facts = {
        "description": "ten kinds of leaves, top-1 on 30 held-out photos",
        "labels": [f"leaf {i}" for i in range(10)],
        "mean": [0.5],
        "std": [0.25],
        "eos_token": None,
    }
    (checkpoint / "data.json").write_text(json.dumps(facts))
    out = tmp_path / "repo" / "leaves" / "1"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    manifest = load_bundle(out).manifest
    assert manifest["labels"] == facts["labels"]
    assert (manifest["preprocessing"]["mean"], manifest["preprocessing"]["std"]) == ([0.5], [0.25])
    assert manifest["training"]["data"] == facts["description"]
    assert [c["inputs"] for c in manifest["verification"]][-1] == "16 Fashion-MNIST test images"


def test_a_bundle_failing_its_own_checks_never_replaces_the_served_version(
    classifier: Exported, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest claims another lam than the graph computes: load_bundle refuses it, and the
    version in place stays byte for byte, with no partial folder left beside it."""
    out = Path(shutil.copytree(classifier.bundle.path, tmp_path / "repo" / "clf" / "1"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = export_cli.build_manifest
    monkeypatch.setattr(export_cli, "build_manifest", lambda *a, **k: {**real(*a, **k), "lam": 0.9})
    assert main(["export", str(checkpoint_of(classifier)), "--out", str(out), "--force"]) == 2
    err = one_line_error(capsys)
    assert "the exported bundle does not load" in err and "lam" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["1"]


def test_a_one_layer_neutreno_model_exports(tmp_path: Path) -> None:
    """One layer is the first layer, which has no fidelity term: lam stays in the manifest and
    the graph has no node carrying it."""
    cfg = get_config("vit-fashion", depth=1, dim=32, heads=2)
    checkpoint = tmp_path / "ckpt"
    save_checkpoint(checkpoint, build_model(cfg), cfg, facts_for(cfg), sample=sample_for(cfg))
    out = tmp_path / "repo" / "one-layer" / "1"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    manifest = load_bundle(out).manifest
    assert (manifest["attention"], manifest["lam"]) == ("neutreno", 0.6)

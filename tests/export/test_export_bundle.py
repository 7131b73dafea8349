"""Bundles: what the CLI writes loads; tampered bundles are refused with a message that says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from support.export_helpers import ROOT, Exported

from export.bundle import MANIFEST_FILE, MODEL_FILE, BundleError, load_bundle, sha256_file


def rewrite_model(folder: Path, model: onnx.ModelProto) -> None:
    """Replace model.onnx and fix its hashes, so only the graph itself is wrong."""
    onnx.save(model, str(folder / MODEL_FILE))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    digest = sha256_file(folder / MODEL_FILE)
    manifest["files"][MODEL_FILE]["sha256"] = manifest["sha256"] = digest
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def edit_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_cli_bundles_load(classifier: Exported, lm: Exported) -> None:
    c = load_bundle(classifier.bundle.path)
    assert (c.name, c.version, c.task) == ("vit-fashion", "1", "classification")
    assert c.labels[0] == "T-shirt/top" and len(c.labels) == 10
    assert c.manifest["preprocessing"]["image_size"] == [28, 28]
    assert c.manifest["training"]["metrics"] == {"top1": 0.5}
    assert [o["name"] for o in c.manifest["outputs"]] == ["logits", "token_similarity"]
    g = load_bundle(lm.bundle.path)
    assert g.tokenizer_path is not None and g.tokenizer_path.is_file()
    assert g.manifest["generation"]["num_layers"] == lm.cfg.depth
    assert g.manifest["inputs"][2]["name"] == "past_key_values.0.key"
    assert all(v["max_abs_diff"] <= 1e-4 for v in g.manifest["verification"])


def test_bad_sha256_refused(bundle_copy) -> None:
    folder = bundle_copy("classifier")
    with open(folder / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"sha256 mismatch for model\.onnx"):
        load_bundle(folder)


def test_tampered_manifest_hash_refused(bundle_copy) -> None:
    folder = bundle_copy("classifier")
    edit_manifest(folder, sha256="0" * 64)
    with pytest.raises(BundleError, match="manifest sha256 0{64} is not the sha256"):
        load_bundle(folder)


@pytest.mark.parametrize("missing", [MODEL_FILE, "tokenizer.json", MANIFEST_FILE])
def test_missing_file_refused(bundle_copy, missing: str) -> None:
    folder = bundle_copy("lm")
    (folder / missing).unlink()
    with pytest.raises(BundleError, match=rf"{folder}: .*{missing}.* missing"):
        load_bundle(folder)


def test_wrong_op_domain_refused(bundle_copy, classifier: Exported) -> None:
    folder = bundle_copy("classifier")
    model = onnx.load(str(folder / MODEL_FILE))
    next(n for n in model.graph.node if n.op_type == "FidelityAttention").domain = "com.example"
    rewrite_model(folder, model)
    with pytest.raises(BundleError, match="wrong op domain 'com.example', expected 'ai.neutreno'"):
        load_bundle(folder)


def test_standard_attention_graph_refused(bundle_copy, export_tmp: Path) -> None:
    folder = bundle_copy("classifier")
    baseline = onnx.load(str(export_tmp / "baseline.onnx"))
    baseline.opset_import.append(onnx.helper.make_opsetid("ai.neutreno", 1))
    rewrite_model(folder, baseline)
    with pytest.raises(BundleError, match=r"ai\.onnx::Attention\) computes attention outside"):
        load_bundle(folder)


def test_missing_function_body_refused(bundle_copy) -> None:
    folder = bundle_copy("classifier")
    model = onnx.load(str(folder / MODEL_FILE))
    del model.functions[:]
    rewrite_model(folder, model)
    with pytest.raises(BundleError, match="has no function body"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "detection"}, "task 'detection' is not one of"),
        ({"labels": None}, "manifest field 'labels' is missing"),
        ({"opset": 22}, "model.onnx has opset 23, manifest says 22"),
        ({"version": "v1"}, "version 'v1' is not a positive integer string"),
        ({"inputs": []}, "graph inputs .* do not match"),
        ({"lam": 0.5}, r"FidelityAttention nodes have lam \[0\.6.*\]; the manifest says lam 0.5"),
        ({"attention": "softmax"}, "the manifest says attention 'softmax' with lam 0.6"),
        ({"lam": 0.0}, r"nodes have lam \[0\.6"),
    ],
)
def test_bad_manifest_refused(bundle_copy, changes: dict, message: str) -> None:
    folder = bundle_copy("classifier")
    edit_manifest(folder, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def _add_file_entry(folder: Path, name: str) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../../secret.txt", "'../../secret.txt' .* is not a plain relative name"),
        ("{outside}", "is not a plain relative name"),
        ("sub/../../secret.txt", "is not a plain relative name"),
        ("link.txt", "link.txt listed in manifest.json is not a regular file"),
        ("folder", "folder listed in manifest.json is not a regular file"),
        ("linked-dir/secret.txt", "lies outside the bundle folder"),
    ],
)
def test_file_entries_are_confined_to_the_bundle_folder(
    bundle_copy, tmp_path: Path, entry: str, message: str
) -> None:
    """Issue 19: a manifest must not make the loader hash (read) files outside its folder."""
    folder = bundle_copy("classifier")
    secret = tmp_path / "secret.txt"
    secret.write_text("host file")
    (folder / "link.txt").symlink_to(secret)
    (folder / "folder").mkdir()
    (folder / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    _add_file_entry(folder, entry.replace("{outside}", str(secret)))
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def test_bundle_error_detail_has_no_path(bundle_copy) -> None:
    folder = bundle_copy("classifier")
    edit_manifest(folder, task="detection")
    with pytest.raises(BundleError) as info:
        load_bundle(folder)
    assert info.value.detail.startswith("task 'detection'") and str(folder) not in info.value.detail


def test_bundle_module_does_not_import_torch() -> None:
    code = "import sys, export.bundle; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0

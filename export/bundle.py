"""Model bundles (docs/BUNDLE_FORMAT.md): write them, and load them with full validation.

No torch here: the service imports this module. A bundle is a folder with model.onnx,
manifest.json and, for text generation, tokenizer.json.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import onnx
from onnx import helper

from export.opdef import DOMAIN, NO_FIDELITY, OP_TYPE, OP_VERSION, OPSET, model_opset

FORMAT_VERSION = 1
MODEL_FILE, MANIFEST_FILE, TOKENIZER_FILE = "model.onnx", "manifest.json", "tokenizer.json"
CLASSIFICATION, SEGMENTATION, TEXT_GENERATION = "classification", "segmentation", "text-generation"
TASKS = (CLASSIFICATION, SEGMENTATION, TEXT_GENERATION)
# Graph tensor names (docs/BUNDLE_FORMAT.md, "Tensors per task"). Vision: PIXEL_VALUES in,
# LOGITS and SIMILARITY (per-layer token similarity) out. Language models: INPUT_IDS and
# ATTENTION_MASK in, LOGITS and SIMILARITY out, plus the KV cache (the Optimum /
# onnxruntime-genai convention): inputs past_key_values.{i}.key|value, outputs
# present.{i}.key|value, one pair per layer.
PIXEL_VALUES, INPUT_IDS, ATTENTION_MASK = "pixel_values", "input_ids", "attention_mask"
LOGITS, SIMILARITY = "logits", "token_similarity"
# Added to language-model sessions at load (export.greedy), never in a bundle: (batch,) int64,
# the argmax of the last position's logits.
GREEDY_IDS = "greedy_ids"
PAST, PRESENT = "past_key_values", "present"
AREA = "area"  # preprocessing `resize`: box (area-average) reduction when shrinking, bilinear up
ATTENTIONS = ("neutreno", "softmax")
# Op types that would mean attention computed outside FidelityAttention.
OTHER_ATTENTION = {
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "PackedAttention",
    "Softmax",
}
# Loading limits: a manifest is a small JSON document whose every value the engine can send to
# front ends as it is (msgpack: 64-bit integers, valid Unicode) and JSON can render (finite
# floats). Anything beyond these bounds is a hostile or broken bundle, refused at load.
MAX_MANIFEST_BYTES = 1 << 20
MAX_MANIFEST_DEPTH = 16
MAX_FILES = 64
INT64_RANGE = (-(2**63), 2**63 - 1)
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "name": str,
    "version": str,
    "task": str,
    "attention": str,
    "lam": (int, float),
    "opset": int,
    "custom_ops": list,
    "model": dict,
    "inputs": list,
    "outputs": list,
    "preprocessing": dict,
    "labels": list,
    "files": dict,
    "sha256": str,
    "training": dict,
}


class BundleError(ValueError):
    """A bundle that must not be served; the message names the bundle and what is wrong.

    `detail` is the message without the bundle's path (the service shows bundles by name).
    """

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"bundle {path}: {detail}")
        self.path, self.detail = path, detail


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path | None:
        return self.path / TOKENIZER_FILE if TOKENIZER_FILE in self.manifest["files"] else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    """Graph inputs/outputs as [{"name", "shape" (str for dynamic axes), "dtype"}]."""
    return [
        {
            "name": v.name,
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        }
        for v in values
    ]


def _fail(path: Path, message: str) -> BundleError:
    return BundleError(path, message)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as JSON, read only when it is a regular file (no link) of at most
    MAX_MANIFEST_BYTES, and every value in it within `_check_value`'s bounds."""
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise _fail(path, "is not a folder")
    if file.is_symlink():
        raise _fail(path, f"{MANIFEST_FILE} is a symbolic link; bundles hold their own files")
    if not file.is_file():
        raise _fail(path, f"{MANIFEST_FILE} is missing")
    size = file.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise _fail(path, f"{MANIFEST_FILE} has {size} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        with file.open("rb") as f:
            manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _fail(path, f"{MANIFEST_FILE} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(manifest, dict):
        raise _fail(path, f"{MANIFEST_FILE} must hold a JSON object")
    for key, value in manifest.items():
        _check_value(path, key, value, 1)
    return manifest


def _check_value(path: Path, where: str, value: Any, depth: int) -> None:
    """A manifest value (at field path `where`) any consumer can carry: nesting at most
    MAX_MANIFEST_DEPTH, integers within 64 bits, finite floats, valid Unicode strings."""
    problem = None
    if depth > MAX_MANIFEST_DEPTH:
        problem = f"nests deeper than {MAX_MANIFEST_DEPTH} levels"
    elif isinstance(value, int) and not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        problem = "is an integer beyond 64 bits"
    elif isinstance(value, float) and not math.isfinite(value):
        problem = f"is {value}, not a finite number"
    elif isinstance(value, str) and not _is_unicode(value):
        problem = "is not valid Unicode"
    if problem is not None:
        raise _fail(path, f"manifest field {_printable(where)} {problem}")
    if isinstance(value, dict):
        for key, item in value.items():
            label = f"{where}.{key}"
            if not _is_unicode(key):
                raise _fail(path, f"manifest field {_printable(label)} is not valid Unicode")
            _check_value(path, label, item, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(path, f"{where}[{index}]", item, depth + 1)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(where: str) -> str:
    """A field path for a message: escaped, and cut short (hostile keys can be long)."""
    return ascii(where)[1:-1][:120]


def _check_schema(path: Path, m: dict[str, Any]) -> None:
    for key, kind in REQUIRED.items():
        if key not in m:
            raise _fail(path, f"manifest field {key!r} is missing")
        if not isinstance(m[key], kind) or isinstance(m[key], bool):
            raise _fail(path, f"manifest field {key!r} has type {type(m[key]).__name__}")
    checks = [
        (
            m["format_version"] == FORMAT_VERSION,
            f"format_version {m['format_version']} is not supported (expected {FORMAT_VERSION})",
        ),
        (
            m["version"].isdigit() and int(m["version"]) > 0,
            f"version {m['version']!r} is not a positive integer string",
        ),
        (m["task"] in TASKS, f"task {m['task']!r} is not one of {list(TASKS)}"),
        (
            m["attention"] in ATTENTIONS,
            f"attention {m['attention']!r} is not one of {list(ATTENTIONS)}",
        ),
        (MODEL_FILE in m["files"], f"manifest 'files' does not list {MODEL_FILE}"),
        (
            m["task"] != "text-generation" or TOKENIZER_FILE in m["files"],
            f"text-generation bundle does not list {TOKENIZER_FILE}",
        ),
        (
            m["task"] != "text-generation" or isinstance(m.get("generation"), dict),
            "text-generation manifest field 'generation' is missing",
        ),
        (
            {"domain": DOMAIN, "op_type": OP_TYPE, "version": OP_VERSION} in m["custom_ops"],
            f"custom_ops does not declare {DOMAIN}::{OP_TYPE} version {OP_VERSION}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise _fail(path, message)


def _bundle_file(path: Path, name: str) -> Path:
    """The file a manifest `files` entry names, confined to the bundle folder: a plain relative
    name (no absolute path, no `..`), a regular file, not a link, resolving inside the folder."""
    parts = PurePosixPath(name).parts
    if not name or "\\" in name or PurePosixPath(name).is_absolute() or ".." in parts:
        raise _fail(
            path,
            f"file entry {name!r} in {MANIFEST_FILE} is not a plain relative name "
            "inside the bundle folder",
        )
    file = path.joinpath(*parts)
    if file.is_symlink() or (file.exists() and not file.is_file()):
        raise _fail(path, f"file {name} listed in {MANIFEST_FILE} is not a regular file")
    if not file.is_file():
        raise _fail(path, f"file {name} listed in {MANIFEST_FILE} is missing")
    if not file.resolve().is_relative_to(path.resolve()):
        raise _fail(path, f"file {name} listed in {MANIFEST_FILE} lies outside the bundle folder")
    return file


def _check_files(path: Path, m: dict[str, Any]) -> None:
    """Every file `files` lists exists in the bundle with its sha256; each file is listed (and
    so read) once, however its name is spelled."""
    if len(m["files"]) > MAX_FILES:
        raise _fail(path, f"manifest 'files' lists {len(m['files'])} files; at most {MAX_FILES}")
    seen: dict[tuple[int, int], str] = {}  # (device, inode) -> the name first listing it
    for name, meta in m["files"].items():
        if not isinstance(meta, dict):
            raise _fail(path, f"manifest 'files' entry {name!r} must be an object with sha256")
        file = _bundle_file(path, name)
        stat = file.stat()
        if (first := seen.setdefault((stat.st_dev, stat.st_ino), name)) != name:
            raise _fail(path, f"manifest 'files' lists {first!r} more than once (as {name!r})")
        actual = sha256_file(file)
        if actual != meta.get("sha256"):
            raise _fail(
                path,
                f"sha256 mismatch for {name}: file has {actual}, "
                f"manifest says {meta.get('sha256')}",
            )
    if m["sha256"] != m["files"][MODEL_FILE]["sha256"]:
        raise _fail(
            path,
            f"manifest sha256 {m['sha256']} is not the sha256 of {MODEL_FILE} "
            f"({m['files'][MODEL_FILE]['sha256']})",
        )


def _check_attention(path: Path, model: onnx.ModelProto) -> None:
    functions = {(f.domain, f.name, f.overload) for f in model.functions}
    found = 0
    for node in model.graph.node:
        label = f"node {node.name or '?'} ({node.domain or 'ai.onnx'}::{node.op_type})"
        if node.op_type == OP_TYPE and node.domain != DOMAIN:
            raise _fail(
                path, f"{label} has the wrong op domain {node.domain!r}, expected {DOMAIN!r}"
            )
        if node.op_type in OTHER_ATTENTION:
            raise _fail(path, f"{label} computes attention outside {DOMAIN}::{OP_TYPE}")
        if node.op_type == OP_TYPE:
            found += 1
            if (DOMAIN, OP_TYPE, node.overload) not in functions:
                raise _fail(
                    path,
                    f"{label} has no function body (overload {node.overload!r}) in {MODEL_FILE}",
                )
    if not found:
        raise _fail(path, f"{MODEL_FILE} has no {DOMAIN}::{OP_TYPE} node")


def _check_lam(path: Path, model: onnx.ModelProto, m: dict[str, Any]) -> None:
    """The manifest's attention kind and lam say what the graph computes: every
    FidelityAttention node has lam 0 (the first layer, or a softmax baseline) or the manifest's
    lam (float32); a NeuTRENO bundle has at least one node with it and a softmax bundle none,
    unless the graph has no layer that can take the term (one layer: the first, no_fidelity)."""
    nodes = [node for node in model.graph.node if node.op_type == OP_TYPE]
    lams = [
        helper.get_attribute_value(a) for node in nodes for a in node.attribute if a.name == "lam"
    ]
    wanted = float(m.get("lam") or 0.0)
    odd = sorted({x for x in lams if x != 0.0 and not math.isclose(x, wanted, rel_tol=1e-6)})
    if odd:
        raise _fail(path, f"{OP_TYPE} nodes have lam {odd}; the manifest says lam {wanted}")
    fidelity = any(x != 0.0 for x in lams)
    capable = any(node.overload != NO_FIDELITY for node in nodes)
    neutreno = m.get("attention") != "softmax" and bool(wanted)
    if fidelity != (neutreno and capable) or (m.get("attention") == "softmax" and wanted):
        raise _fail(
            path,
            f"the manifest says attention {m.get('attention')!r} with lam {wanted}, but the "
            f"graph's lam values are {sorted(set(lams))}",
        )


def _check_graph(path: Path, m: dict[str, Any]) -> None:
    try:
        model = onnx.load(str(path / MODEL_FILE), load_external_data=False)
    except Exception as e:  # protobuf raises several types for a corrupt file
        raise _fail(path, f"{MODEL_FILE} is not a readable ONNX model ({e})") from None
    opset = model_opset(model)
    if opset != m["opset"]:
        raise _fail(path, f"{MODEL_FILE} has opset {opset}, manifest says {m['opset']}")
    if opset < OPSET:
        raise _fail(path, f"opset {opset} is below {OPSET}, which FidelityAttention needs")
    imports = {o.domain: o.version for o in model.opset_import}
    if imports.get(DOMAIN) != OP_VERSION:
        raise _fail(path, f"{MODEL_FILE} does not import domain {DOMAIN} version {OP_VERSION}")
    _check_attention(path, model)
    _check_lam(path, model, m)
    for kind, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        if tensor_specs(values) != m[kind]:
            raise _fail(
                path, f"graph {kind} {tensor_specs(values)} do not match the manifest's {m[kind]}"
            )


def kv_names(depth: int, prefix: str) -> list[str]:
    """['{prefix}.0.key', '{prefix}.0.value', ...] for `depth` layers (prefix PAST or PRESENT)."""
    return [f"{prefix}.{i}.{kind}" for i in range(depth) for kind in ("key", "value")]


def load_bundle(path: str | Path) -> Bundle:
    """Validate the bundle in `path` (schema, files, sha256, opset, op domain, graph I/O)."""
    path = Path(path)
    manifest = _read_manifest(path)
    _check_schema(path, manifest)
    _check_files(path, manifest)
    _check_graph(path, manifest)
    return Bundle(path, manifest)


def write_bundle(
    out: str | Path,
    model: onnx.ModelProto,
    manifest: dict[str, Any],
    tokenizer: str | Path | None = None,
) -> Bundle:
    """Write model.onnx (+ tokenizer.json) and manifest.json to `out`, then load it back.

    `manifest` carries the descriptive fields (name, version, task, attention, lam, model,
    preprocessing, labels, training, ...); files, sha256, opset, custom ops, inputs, outputs,
    format_version and created are filled in here.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / MODEL_FILE))
    names = [MODEL_FILE]
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
        names.append(TOKENIZER_FILE)
    files = {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size} for n in names}
    full = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "opset": model_opset(model),
        "custom_ops": [{"domain": DOMAIN, "op_type": OP_TYPE, "version": OP_VERSION}],
        "inputs": tensor_specs(model.graph.input),
        "outputs": tensor_specs(model.graph.output),
        "files": files,
        "sha256": files[MODEL_FILE]["sha256"],
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return load_bundle(out)

"""`neutreno export <checkpoint> --out model_repository/<name>/<version>`: checkpoint -> bundle.

The bundle's name is its folder's name (the service serves it under that name): --out must end
in <name>/<version>, and an existing version folder is only replaced with --force. Exports with
dynamic axes, attaches the FidelityAttention bodies, runs the full onnx.checker,
verifies ONNX Runtime against PyTorch on random and real inputs, and only then writes the bundle.
`--softmax-baseline PATH` also writes the same weights with plain softmax attention (lam = 0,
standard opset-23 Attention) to PATH, outside the model repository, for bench/attention_overhead.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
import shutil
from pathlib import Path
from typing import Any

import onnx

from export.bundle import (
    AREA,
    CLASSIFICATION,
    SEGMENTATION,
    TEXT_GENERATION,
    Bundle,
    BundleError,
    write_bundle,
)
from export.graphs import export_model
from export.runtime import session
from export.verify import Parity, verify
from models.checkpoint import (
    CONFIG,
    DATA,
    WEIGHTS,
    DatasetFacts,
    load_checkpoint,
    load_metrics,
    load_sample,
)
from models.config import LMConfig, ModelConfig, ViTConfig
from models.registry import build_model
from neutreno.command import ArgumentParser, CommandError

TASK_OF_FAMILY = {"vit": CLASSIFICATION, "segmenter": SEGMENTATION, "lm": TEXT_GENERATION}


def load_facts(checkpoint: Path, cfg: ModelConfig) -> DatasetFacts:
    """The checkpoint's data facts (data.json, written by neutreno train), checked against the
    model: one label per class and one mean/std per input channel."""
    try:
        facts = DatasetFacts.load(checkpoint)
    except FileNotFoundError:
        raise CommandError(
            f"{checkpoint / DATA} does not exist: it holds the facts of the training data "
            "(description, labels, mean, std, eos_token) that the manifest copies, and "
            "neutreno train writes it; see docs/BUNDLE_FORMAT.md"
        ) from None
    except (ValueError, TypeError) as exc:  # not JSON, or fields DatasetFacts does not have
        raise CommandError(f"{checkpoint / DATA} is not a data facts file: {exc}") from None
    if isinstance(cfg, LMConfig):
        if facts.eos_token is None:
            raise CommandError(f"{checkpoint / DATA} names no eos_token for the language model")
        return facts
    assert isinstance(cfg, ViTConfig)  # the image families: ViT and Segmenter
    if len(facts.labels) != cfg.num_classes:
        raise CommandError(
            f"{checkpoint / DATA} has {len(facts.labels)} labels; the model has "
            f"{cfg.num_classes} classes"
        )
    if len(facts.mean) != cfg.in_chans or len(facts.std) != cfg.in_chans:
        raise CommandError(
            f"{checkpoint / DATA} needs one mean and std per input channel ({cfg.in_chans})"
        )
    return facts


def preprocessing_for(cfg: ModelConfig, facts: DatasetFacts) -> dict[str, Any]:
    """Pixel preprocessing (docs/BUNDLE_FORMAT.md) or the tokenizer file for LMs."""
    if isinstance(cfg, LMConfig):
        return {"tokenizer": "tokenizer.json", "padding_side": "left"}
    assert isinstance(cfg, ViTConfig)  # the image families: ViT and Segmenter
    return {
        "image_size": [cfg.img_size, cfg.img_size],
        "channels": cfg.in_chans,
        "mean": facts.mean,
        "std": facts.std,
        "resize": AREA,
        "background": "black",
    }


def generation_for(cfg: LMConfig, tokenizer: Path, eos_token: str) -> dict[str, Any]:
    from tokenizers import Tokenizer

    return {
        "context_length": cfg.block_size,
        "num_layers": cfg.depth,
        "num_heads": cfg.heads,
        "head_dim": cfg.dim // cfg.heads,
        "vocab_size": cfg.vocab_size,
        "eos_token_id": Tokenizer.from_file(str(tokenizer)).token_to_id(eos_token),
        "bos_token_id": None,
    }


def training_for(checkpoint: Path, facts: DatasetFacts) -> dict[str, Any]:
    """The data (from data.json) and, from the checkpoint's metrics.json (both written by
    `neutreno train`): the last and every command of its history, their total wall time, and
    the final metrics."""
    metrics = load_metrics(checkpoint)
    metrics.pop("data", None)  # metrics.json of checkpoints written before data.json existed
    data, command = facts.description, metrics.pop("command", None)
    commands = metrics.pop("commands", [command] if command else [])
    return {
        "data": data,
        "command": command,
        "commands": commands,
        "runs": metrics.pop("runs", []),
        "wall_time_s": metrics.pop("wall_time_s", None),
        "checkpoint": str(checkpoint),
        "metrics": metrics,
    }


def exporter_versions() -> dict[str, str]:
    return {
        p: importlib.metadata.version(p) for p in ("torch", "onnx", "onnxscript", "onnxruntime")
    }


def build_manifest(
    cfg: ModelConfig,
    name: str,
    version: str,
    checkpoint: Path,
    facts: DatasetFacts,
    checks: list[Parity],
    fp16: bool,
    tokenizer: Path | None,
) -> dict[str, Any]:
    """The descriptive manifest fields; write_bundle adds files, hashes, opset and tensors."""
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": TASK_OF_FAMILY[cfg.family],
        "attention": cfg.attention,
        "lam": cfg.fidelity_lam,
        "precision": "float16" if fp16 else "float32",
        "model": cfg.to_dict(),
        "preprocessing": preprocessing_for(cfg, facts),
        "labels": facts.labels,
        "training": training_for(checkpoint, facts),
        "verification": [dataclasses.asdict(c) for c in checks],
        "exporter": exporter_versions(),
    }
    if isinstance(cfg, LMConfig):
        assert tokenizer is not None  # export_checkpoint requires an LM's tokenizer.json
        assert facts.eos_token is not None  # load_facts requires an LM's eos_token
        manifest["generation"] = generation_for(cfg, tokenizer, facts.eos_token)
    return manifest


def export_softmax_baseline(checkpoint: Path, path: Path) -> list[Parity]:
    """The checkpoint's weights with softmax attention (lam 0) as standard ONNX Attention,
    written to `path`; returns its ORT-vs-torch parity checks."""
    model, cfg = load_checkpoint(checkpoint)
    cfg = dataclasses.replace(cfg, attention="softmax")
    baseline = build_model(cfg)
    baseline.load_state_dict(model.state_dict())
    proto = export_model(baseline, cfg, standard=True)
    checks = verify(baseline, cfg, session(proto), sample=load_sample(checkpoint))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return checks


def bundle_name(out: Path, name: str | None) -> str:
    """The name of the bundle written to `out` = <repository>/<name>/<version>: its folder's."""
    if not out.name.isdigit() or int(out.name) < 1:
        raise CommandError(
            f"--out must be <repository>/<name>/<version> with a positive integer "
            f"version folder, e.g. model_repository/my-classifier/1; got {out}"
        )
    folder = out.resolve().parent.name
    if name is not None and name != folder:
        fix = out.parent.parent / name / out.name
        raise CommandError(
            f"--name {name} differs from the bundle folder {folder!r} in --out, "
            f"the name the service serves it under; use --out {fix}"
        )
    return folder


def check_checkpoint(checkpoint: Path) -> None:
    """A folder written by `neutreno train` (config.json + model.safetensors)."""
    for file in (CONFIG, WEIGHTS):
        if not (checkpoint / file).is_file():
            raise CommandError(
                f"{checkpoint / file} does not exist; pass a checkpoint folder "
                "written by neutreno train"
            )


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    name: str | None = None,
    fp16: bool = False,
    force: bool = False,
) -> Bundle:
    """Export, check and verify `checkpoint`, then write the bundle to `out` (.../<name>/<version>).

    An existing `out` is refused unless `force`, and then replaced only once the new bundle has
    passed verification.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    name = bundle_name(out, name)
    if out.exists() and not force:
        raise CommandError(
            f"{out} already exists; export to a new version folder "
            f"({out.parent}/{int(out.name) + 1}) or pass --force to replace it"
        )
    check_checkpoint(checkpoint)
    try:
        model, cfg = load_checkpoint(checkpoint)
    except ValueError as exc:  # weights that do not fit config.json, an unknown family
        raise CommandError(f"{exc}; export a folder as neutreno train wrote it") from None
    facts = load_facts(checkpoint, cfg)
    tokenizer = checkpoint / "tokenizer.json" if isinstance(cfg, LMConfig) else None
    if tokenizer is not None and not tokenizer.is_file():
        raise CommandError(
            f"{checkpoint} has no tokenizer.json, which the LM bundle needs; "
            "train with --data-dir holding tokenizer.json (make data writes it)"
        )
    proto = export_model(model, cfg, fp16=fp16)
    checks = verify(
        model, cfg, session(proto), tokenizer, fp16=fp16, sample=load_sample(checkpoint)
    )
    manifest = build_manifest(cfg, name, out.name, checkpoint, facts, checks, fp16, tokenizer)
    return publish(out, proto, manifest, tokenizer)


def publish(
    out: Path, proto: onnx.ModelProto, manifest: dict[str, Any], tokenizer: Path | None
) -> Bundle:
    """Write the bundle beside `out` (a dot folder the service does not read), load it back,
    and only then put it in place of `out`: a bundle that fails its own checks never lands in
    the repository nor removes the version it would replace."""
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        bundle = write_bundle(partial, proto, manifest, tokenizer)  # loaded back and checked
    except BundleError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise CommandError(f"the exported bundle does not load: {exc.detail}") from None
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return dataclasses.replace(bundle, path=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(
        prog="neutreno export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("checkpoint", type=Path, help="folder with config.json + model.safetensors")
    ap.add_argument(
        "--out", type=Path, required=True, help="bundle folder, model_repository/<name>/<version>"
    )
    ap.add_argument("--name", help="bundle name; must equal the <name> folder of --out")
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    ap.add_argument("--fp16", action="store_true", help="half-precision graph (GPU serving)")
    ap.add_argument(
        "--softmax-baseline",
        type=Path,
        metavar="PATH",
        help="also write the plain-softmax ONNX graph of the same weights to PATH",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    bundle = export_checkpoint(args.checkpoint, args.out, args.name, args.fp16, args.force)
    worst = max(c["max_abs_diff"] for c in bundle.manifest["verification"])
    print(
        f"wrote {bundle.path} ({bundle.name} v{bundle.version}, {bundle.task}, "
        f"max |ORT - torch| = {worst:.2g})"
    )
    if args.softmax_baseline:
        checks = export_softmax_baseline(args.checkpoint, args.softmax_baseline)
        print(
            f"wrote {args.softmax_baseline} (softmax baseline, max |ORT - torch| = "
            f"{max(c.max_abs_diff for c in checks):.2g})"
        )
    return 0

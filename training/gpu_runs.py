"""Issue 17's training runs, all at once on one GPU, each under the same wall-time budget.

    python -m training.gpu_runs launch --runs gpu-runs --data .gpu-data --budget 300
    python -m training.gpu_runs pack --runs gpu-runs --out "$OUT"
    python -m training.gpu_runs apply --parts <folder with the parts>     # back here, on CPU

`launch` starts every run of `plan()` as its own `python -m training.train` process (tiny models:
they share the GPU; one CPU thread each), stops any that outlive the budget, then measures the
per-layer token similarity of the depth-study runs on the GPU. `pack` keeps what the CPU side
needs (metrics, logs, similarity; weights of the candidate shipped models, the language model
only for the best validation bpc) and writes it as a tar split in parts under the 16 MiB a file
that come back. bench/gpu_train.sh runs both. `apply` (on the CPU machine, after the call)
unpacks the parts, files the depth study under checkpoints/depth-study, picks the classifier,
segmenter and LM to ship (standard targets kept, then best on the framing cases / validation
bpc), moves the old ones aside, re-exports the three bundles (with their parity checks),
evaluates the framing cases and regenerates docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models.checkpoint import WEIGHTS, load_checkpoint, load_metrics
from models.diagnostics import model_similarity
from models.vit import ViT
from training.data import fashion

STUDY_DEPTHS = (6, 12, 24)
STUDY_SEEDS = (0, 1, 2)
SIMILARITY = "similarity.json"
PART_BYTES = 15 * 2**20
PROBE_IMAGES = 1000
GRACE_S = 120  # after the budget: final evaluation and checkpoint, then the process is stopped


@dataclass(frozen=True)
class Run:
    """One training process: its folder name and `training.train` arguments (without --out)."""

    name: str
    args: tuple[str, ...]
    ship: bool = False  # candidate for a shipped bundle: its weights come back

    @property
    def study(self) -> bool:
        return self.name.startswith("depth")


def plan(data: Path, budget: float, max_steps: int | None = None) -> list[Run]:
    """Every run: robust classifier and segmenter candidates, LM candidates, the depth study.

    Each pair of the study shares width, recipe, seed (so data order) and the wall-time
    budget; steps reached are in each run's metrics.
    """
    common = (
        "--time-limit",
        str(budget),
        "--no-progress",
        "--threads",
        "1",
        *(("--max-steps", str(max_steps)) if max_steps else ("--epochs", "1000")),
    )
    kjv = ("--data-dir", str(data / "kjv"))
    segmenter = (  # the shipped segmenter's architecture, fine-tuned from it
        "segmenter-fashion",
        "--set",
        "stem=conv",
        "--set",
        "window=3",
        "--set",
        "refine_channels=16",
        "--init",
        "checkpoints/fashion-segmenter",
    )
    runs = [
        Run(
            "classifier-d64",
            (
                "vit-fashion",
                "--depth",
                "6",
                "--set",
                "stem=conv",
                "--init",
                "checkpoints/fashion-classifier",
                "--framing",
                "0.5",
                "--batch-size",
                "256",
                "--lr",
                "1e-3",
                "--warmup",
                "300",
                *common,
            ),
            ship=True,
        ),
        Run(
            "classifier-d96",
            (
                "vit-fashion",
                "--depth",
                "6",
                "--set",
                "stem=conv",
                "--set",
                "dim=96",
                "--framing",
                "0.5",
                "--batch-size",
                "256",
                "--lr",
                "2e-3",
                "--warmup",
                "300",
                *common,
            ),
            ship=True,
        ),
        Run(
            "segmenter-f50",
            (
                *segmenter,
                "--framing",
                "0.5",
                "--batch-size",
                "64",
                "--lr",
                "5e-4",
                "--warmup",
                "200",
                *common,
            ),
            ship=True,
        ),
        Run(
            "segmenter-f70",
            (
                *segmenter,
                "--framing",
                "0.7",
                "--batch-size",
                "64",
                "--lr",
                "1e-3",
                "--warmup",
                "200",
                *common,
            ),
            ship=True,
        ),
    ]
    for name, dim, depth, heads, dropout, lr in (
        ("lm-d256x6", 256, 6, 8, 0.1, "1e-3"),
        ("lm-d256x8", 256, 8, 8, 0.15, "8e-4"),
        ("lm-d320x6", 320, 6, 5, 0.2, "8e-4"),
    ):
        runs.append(
            Run(
                name,
                (
                    "lm-kjv",
                    *kjv,
                    "--set",
                    f"dim={dim}",
                    "--depth",
                    str(depth),
                    "--set",
                    f"heads={heads}",
                    "--set",
                    f"dropout={dropout}",
                    "--batch-size",
                    "64",
                    "--lr",
                    lr,
                    "--warmup",
                    "200",
                    "--weight-decay",
                    "0.1",
                    "--eval-every",
                    "300",
                    "--keep-best",
                    "validation_bpc",
                    *common,
                ),
                ship=True,
            )
        )
    recipe = ("--batch-size", "256", "--lr", "1.5e-3", "--warmup", "200", *common)
    runs += [
        study_run(depth, attention, seed, recipe)
        for depth in STUDY_DEPTHS
        for seed in STUDY_SEEDS
        for attention in ("neutreno", "softmax")
    ]
    return runs


def study_run(depth: int, attention: str, seed: int, recipe: tuple[str, ...]) -> Run:
    """One depth-study run: vit-fashion at `depth` with `attention`; the seed fixes its initial
    weights and data order, so a NeuTRENO run and its softmax twin differ in attention only."""
    return Run(
        f"depth{depth}-{attention}-s{seed}",
        (
            "vit-fashion",
            "--depth",
            str(depth),
            "--attention",
            attention,
            "--seed",
            str(seed),
            *recipe,
        ),
    )


def launch(
    runs_dir: Path, data: Path, budget: float, max_steps: int | None, only: str | None
) -> None:
    """Start every run, wait (stopping stragglers at budget + GRACE_S), then measure the study.

    A run that fails within the first half of the budget is started once more without bf16
    autocast (`--no-amp`) on the budget left, so one dtype problem on the GPU costs one run's
    precision, not the call.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "NEUTRENO_FASHION_MNIST_DIR": str(data / "fashion-mnist"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    selected = [r for r in plan(data, budget, max_steps) if not only or only in r.name]
    started = time.time()
    procs = {run.name: _start(runs_dir, run, run.args, env) for run in selected}
    retried: set[str] = set()
    while (
        any(p.poll() is None for p in procs.values()) and time.time() < started + budget + GRACE_S
    ):
        for run in selected:
            left = budget - (time.time() - started)
            if (
                procs[run.name].poll() not in (None, 0)
                and run.name not in retried
                and left > budget / 2
            ):
                print(
                    f"{run.name}: exit {procs[run.name].returncode}; again without autocast",
                    flush=True,
                )
                retried.add(run.name)
                procs[run.name] = _start(
                    runs_dir, run, (*run.args, "--no-amp", "--time-limit", str(int(left))), env
                )
        time.sleep(2)
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.kill()
        print(f"{name}: exit {proc.wait()}", flush=True)
    for run in selected:
        if run.study and (runs_dir / run.name / "metrics.json").exists():
            measure(runs_dir / run.name, data / "fashion-mnist")


def _start(
    runs_dir: Path, run: Run, args: tuple[str, ...], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`python -m training.train ARGS --out RUNS/NAME`, output appended to RUNS/NAME.log."""
    with open(runs_dir / f"{run.name}.log", "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "training.train", *args, "--out", str(runs_dir / run.name)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def measure(folder: Path, fashion_dir: Path) -> list[float]:
    """Per-layer token similarity of a classifier on the first PROBE_IMAGES Fashion-MNIST test
    images (as training.report measures it), saved as similarity.json."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_checkpoint(folder)
    assert isinstance(model, ViT), type(model)  # the depth study trains classifiers
    images, _ = fashion.load_split("test", fashion_dir)
    probe = torch.from_numpy(fashion.normalize(images[:PROBE_IMAGES])).to(device)
    values = model_similarity(model.to(device), probe)
    (folder / SIMILARITY).write_text(json.dumps(values) + "\n")
    return values


HEADLINE = ("top1", "miou", "validation_bpc", "test_bpc")


def summary(runs_dir: Path) -> list[str]:
    """One line per run: final step, wall time and headline metrics (the call's output)."""
    lines = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        m = load_metrics(folder)
        best = load_metrics(folder / "best")
        facts = [f"{k}={m[k]:.4f}" for k in HEADLINE if k in m]
        facts += [f"best_{k}={best[k]:.4f}" for k in HEADLINE if k in best]
        lines.append(
            f"{folder.name}: step={m.get('step')} s={m.get('wall_time_s')} " + " ".join(facts)
        )
    return lines


def best_lm(runs_dir: Path) -> Path | None:
    """The LM run folder whose kept-best checkpoint has the lowest validation bpc."""
    scored = [
        (load_metrics(p / "best")["validation_bpc"], p)
        for p in sorted(runs_dir.glob("lm-*"))
        if (p / "best" / WEIGHTS).exists()
    ]
    return min(scored)[1] if scored else None


def pack(runs_dir: Path, out: Path) -> list[Path]:
    """Tar metrics, logs, similarity and the shippable weights; split into PART_BYTES parts."""
    lm = best_lm(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / "gpu-runs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for path in sorted(runs_dir.rglob("*")):
            rel = path.relative_to(runs_dir)
            heavy = path.name == "train_state.pt" or (path.name == WEIGHTS and not _ships(rel, lm))
            if path.is_file() and not heavy:
                tar.add(path, arcname=str(Path(runs_dir.name) / rel))
    return split(tar_path)


def _ships(rel: Path, lm: Path | None) -> bool:
    """Weights worth bringing back: classifier/segmenter candidates and the chosen LM's best."""
    top = rel.parts[0]
    if top.startswith(("classifier-", "segmenter-")):
        return True
    return lm is not None and top == lm.name and rel.parts[1] == "best"


def split(path: Path) -> list[Path]:
    """path -> path.part-00, part-01, ... of at most PART_BYTES each (path removed)."""
    parts: list[Path] = []
    with open(path, "rb") as src:
        while chunk := src.read(PART_BYTES):
            part = path.with_name(f"{path.name}.part-{len(parts):02d}")
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts


TARGETS = {"classifier": ("top1", 0.90), "segmenter": ("miou", 0.80)}
SHIPPED = {"classifier": "fashion-classifier", "segmenter": "fashion-segmenter", "lm": "kjv-lm"}
BUNDLE_DIR = Path("model_repository")


def unpack(parts: Path, dest: Path) -> Path:
    """Join gpu-runs.tar.part-* from `parts` and extract under dest; returns the runs folder."""
    tar_path = dest / "gpu-runs.tar"
    dest.mkdir(parents=True, exist_ok=True)
    with open(tar_path, "wb") as joined:
        for part in sorted(parts.glob("gpu-runs.tar.part-*")):
            joined.write(part.read_bytes())
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
        top = tar.getnames()[0].split("/")[0]
    tar_path.unlink()
    return dest / top


def file_study(runs_dir: Path, checkpoints: Path) -> None:
    """Copy the depth-study runs (config, metrics, similarity; no weights) to checkpoints/."""
    for run in sorted(runs_dir.glob("depth*")):
        if run.is_dir() and (run / SIMILARITY).exists():
            dest = checkpoints / "depth-study" / run.name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(run, dest, ignore=shutil.ignore_patterns(WEIGHTS, "train_state.pt"))


def choose(runs_dir: Path, kind: str) -> Path:
    """The candidate that meets the standard target with the best framed-case score."""
    from export.bundle import AREA
    from training import robustness

    metric, target = TARGETS[kind]
    scored = []
    for run in sorted(runs_dir.glob(f"{kind}-*")):
        if (run / WEIGHTS).exists() and load_metrics(run).get(metric, 0.0) >= target:
            cases = (
                robustness.segmenter_cases(200)
                if kind == "segmenter"
                else robustness.classifier_cases(2000)
            )[1:]
            results = robustness.evaluate(run, cases, (AREA,))
            scored.append((sum(r[AREA] for r in results.values()), run))
            print(f"{run.name}: {metric} {load_metrics(run)[metric]:.4f}, framed {results}")
    if not scored:
        raise SystemExit(f"no {kind} run reached {metric} >= {target}: nothing to ship")
    return max(scored)[1]


def install(run: Path, kind: str, checkpoints: Path, old_suffix: str = "-28px") -> Path:
    """Copy a run's checkpoint to checkpoints/<shipped name>; the old one moves to +old_suffix
    (LM: the kept-best checkpoint, with the run's tokenizer and command)."""
    dest = checkpoints / SHIPPED[kind]
    if kind != "lm" and dest.exists() and not dest.with_name(dest.name + old_suffix).exists():
        dest.rename(dest.with_name(dest.name + old_suffix))
    shutil.rmtree(dest, ignore_errors=True)
    source = run / "best" if kind == "lm" else run
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("train_state.pt", "best"))
    metrics = load_metrics(dest)
    if kind == "lm":  # the kept-best metrics + what the final metrics say about the run
        final = load_metrics(run)
        metrics.update(
            {
                k: final[k]
                for k in (
                    "command",
                    "data",
                    "world_size",
                    "device",
                    "parameters",
                    "wall_time_s",
                    "seed",
                )
                if k in final
            }
        )
        shutil.copy(run / "tokenizer.json", dest / "tokenizer.json")
    else:  # the run started from the checkpoint that now lives at +old_suffix
        init = f"--init {checkpoints / SHIPPED[kind]} "
        metrics["command"] = metrics.get("command", "").replace(
            init, f"--init {checkpoints / SHIPPED[kind]}{old_suffix} "
        )
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return dest


def apply(parts: Path, checkpoints: Path = Path("checkpoints")) -> None:
    """Post-processing on the CPU machine; see the module docstring."""
    from export.cli import main as export_main
    from training import report, robustness

    runs_dir = unpack(parts, Path("runs"))
    file_study(runs_dir, checkpoints)
    chosen = {
        "classifier": choose(runs_dir, "classifier"),
        "segmenter": choose(runs_dir, "segmenter"),
        "lm": best_lm(runs_dir),
    }
    for kind, run in chosen.items():
        if run is None:
            raise SystemExit("no LM run kept a best checkpoint")
        folder = install(run, kind, checkpoints)
        print(f"shipping {run} as {folder}", flush=True)
        export_main([str(folder), "--out", str(BUNDLE_DIR / SHIPPED[kind] / "1")])
    robustness.main(
        [
            str(checkpoints / name)
            for name in (
                "fashion-classifier-28px",
                "fashion-classifier",
                "fashion-segmenter-28px",
                "fashion-segmenter",
            )
        ]
        + ["--out", str(checkpoints / "robustness.json")]
    )
    report.main([])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["launch", "pack", "plan", "apply"])
    ap.add_argument("--runs", default="gpu-runs", help="folder of the run folders")
    ap.add_argument("--data", default=".gpu-data", help="holds fashion-mnist/ and kjv/")
    ap.add_argument("--budget", type=float, default=220.0, help="training seconds per run")
    ap.add_argument("--max-steps", type=int, help="cap each run (CPU smoke tests)")
    ap.add_argument("--only", help="launch only the runs whose name contains this")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--parts", type=Path, help="apply: folder with gpu-runs.tar.part-*")
    args = ap.parse_args(argv)
    runs_dir, data = Path(args.runs), Path(args.data)
    if args.command == "plan":
        for run in plan(data, args.budget, args.max_steps):
            print(run.name, " ".join(run.args))
    elif args.command == "apply":
        if not args.parts:
            raise SystemExit("apply needs --parts")
        apply(args.parts)
    elif args.command == "launch":
        launch(runs_dir, data, args.budget, args.max_steps, args.only)
    else:
        print("\n".join(summary(runs_dir)))
        for part in pack(runs_dir, Path(args.out)):
            print(part, part.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

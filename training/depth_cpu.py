"""The depth study on the 2-core CPU: 18 runs (depth 6/12/24 x 3 seeds x NeuTRENO/softmax), one
at a time at one thread each, resumable across sessions.

Configuration (sized so the 18 runs take about 2 hours of one core on this machine; measured
here at one thread with other work on the cores: 0.10 s per step at depth 6, 0.37 s at depth 24):
the vit-fashion ViT (dim 64, 4 heads, MLP ratio 2) with patch 7, i.e. a 4x4 token grid + cls
(17 tokens instead of 50: a third of the work per layer, and fewer tokens collapse sooner), batch
128, lr 1.5e-3 with 100 warm-up steps, exactly STEPS optimizer steps (a fixed step budget, not a
wall-time one, so a busy machine changes wall time, not results). Within a pair, the seed fixes
the initial weights and the data order; the pair differs only in --attention.

    python -m training.depth_cpu run        # train what is missing (skips finished runs,
                                            # resumes partial ones from their train_state.pt)
    python -m training.depth_cpu plan       # one command per run
    python -m training.depth_cpu report     # markdown rows of what has finished (+ plot)

A run trains in runs/depth-cpu/NAME (weights and train_state.pt: not committed); when it ends,
its per-layer token similarity on 1,000 test images is measured (training.gpu_runs.measure) and
its small files (config, metrics, similarity; no weights) are copied to checkpoints/depth-study,
the folder training.depth_study and training.report read.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from models.checkpoint import CONFIG, METRICS, STATE, load_metrics
from training import depth_study, runs
from training.data import fashion
from training.gpu_runs import SIMILARITY, STUDY_DEPTHS, STUDY_SEEDS, Run, measure, study_run

STEPS = 1200
RUNS_DIR = Path("runs/depth-cpu")
STUDY_DIR = Path("checkpoints/depth-study")
RECIPE = (
    "--set",
    "patch_size=7",
    "--batch-size",
    "128",
    "--lr",
    "1.5e-3",
    "--warmup",
    "100",
    "--eval-every",
    "300",
    "--threads",
    "1",
    "--no-progress",
)
SMALL_FILES = (CONFIG, METRICS, runs.LOG, "data.json", SIMILARITY)


def plan(
    steps: int = STEPS,
    depths: tuple[int, ...] = STUDY_DEPTHS,
    seeds: tuple[int, ...] = STUDY_SEEDS,
) -> list[Run]:
    """The runs in the order they train: shallow first (whole rows finish early), each seed's
    NeuTRENO run next to its softmax twin."""
    recipe = ("--max-steps", str(steps), *RECIPE)
    return [
        study_run(depth, attention, seed, recipe)
        for depth in depths
        for seed in seeds
        for attention in ("neutreno", "softmax")
    ]


def stage(run: Run, runs_dir: Path, study_dir: Path) -> str:
    """Where a run stands: done (filed in study_dir), trained (final metrics, not measured),
    partial (train_state.pt to resume), dirty (files but nothing to resume) or new."""
    folder = runs_dir / run.name
    steps = int(run.args[run.args.index("--max-steps") + 1])
    if (study_dir / run.name / SIMILARITY).exists():
        return "done"
    if (folder / METRICS).exists() and load_metrics(folder).get("step", 0) >= steps:
        return "trained"
    if (folder / STATE).exists():
        return "partial"
    return "dirty" if folder.is_dir() and any(folder.iterdir()) else "new"


def train_command(run: Run, runs_dir: Path, where: str) -> list[str]:
    """`python -m training.train ARGS --out RUNS/NAME`, continuing or clearing the folder."""
    extra = {"partial": ["--resume"], "dirty": ["--force"]}.get(where, [])
    out = str(runs_dir / run.name)
    return [sys.executable, "-m", "training.train", *run.args, "--out", out, *extra]


def file_run(folder: Path, study_dir: Path) -> Path:
    """Measure a trained run's per-layer similarity and copy its small files to study_dir."""
    measure(folder, fashion.data_dir())
    dest = study_dir / folder.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (folder / name).exists():
            shutil.copy(folder / name, dest / name)
    return dest


def run_all(plan_: list[Run], runs_dir: Path, study_dir: Path) -> list[Path]:
    """Train every run not yet done, one at a time (log: RUNS/NAME.log); file each as it ends.
    Stops at the first run that fails. Returns the folders filed by this call."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    filed = []
    for run in plan_:
        where = stage(run, runs_dir, study_dir)
        if where == "done":
            continue
        if where != "trained":
            print(f"{run.name}: {where}, training", flush=True)
            with open(runs_dir / f"{run.name}.log", "a") as log:
                code = subprocess.call(
                    train_command(run, runs_dir, where), stdout=log, stderr=subprocess.STDOUT
                )
            if code != 0:
                raise SystemExit(f"{run.name}: exit {code}; see {runs_dir / run.name}.log")
        filed.append(file_run(runs_dir / run.name, study_dir))
        print(f"{run.name}: filed in {filed[-1]}", flush=True)
    return filed


def report(study_dir: Path) -> list[str]:
    """Markdown of the finished rows: the table, the plot (study_dir/depth_study.png) and the
    per-layer similarity (mean +- std over seeds)."""
    rows = depth_study.load_rows(study_dir) if study_dir.is_dir() else []
    if not rows:
        return ["(no finished run yet)"]
    for row in rows:  # the command that trains the run from scratch
        row.command = row.command.replace(" --resume", "").replace(" --force", "")
    png = study_dir / "depth_study.png"
    depth_study.plot(rows, png)
    return [
        *depth_study.table(rows),
        "",
        f"![depth study](../{png})",
        "",
        *depth_study.per_layer(rows),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["run", "plan", "report"])
    ap.add_argument("--runs", type=Path, default=RUNS_DIR, help="training folders")
    ap.add_argument("--study", type=Path, default=STUDY_DIR, help="filed small outputs")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the similarity probe, like the runs, on one core
    runs_ = plan(args.steps)
    if args.command == "run":
        run_all(runs_, args.runs, args.study)
    elif args.command == "plan":
        for run in runs_:
            where = stage(run, args.runs, args.study)
            print(f"[{where}] neutreno train {' '.join(run.args)} --out {args.runs / run.name}")
    else:
        print("\n".join(report(args.study)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The depth study: NeuTRENO vs softmax ViTs on Fashion-MNIST at depths 6, 12 and 24, 3 seeds.

Reads run folders written by training.gpu_runs (metrics.json, config.json, similarity.json: the
per-layer token similarity on 1,000 test images) and gives, per (depth, attention), the mean and
standard deviation over seeds of top-1 and of each layer's similarity, as a markdown table and a
plot. training.report puts both into docs/RESULTS.md.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from models.checkpoint import CONFIG, load_metrics  # noqa: E402

SIMILARITY = "similarity.json"


@dataclass
class Row:
    """One (depth, attention) cell over its seeds."""

    depth: int
    attention: str
    top1: list[float]
    steps: list[int]
    similarity: np.ndarray  # (seeds, depth)
    command: str

    @staticmethod
    def mean_std(values: list[float] | np.ndarray) -> tuple[float, float]:
        values = [float(v) for v in values]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def load_rows(folder: Path) -> list[Row]:
    """Group the run folders (config.json + metrics.json + similarity.json) by depth/attention."""
    groups: dict[tuple[int, str], list[Path]] = {}
    for run in sorted(folder.iterdir()):
        if (run / SIMILARITY).exists() and (run / CONFIG).exists():
            cfg = json.loads((run / CONFIG).read_text())
            groups.setdefault((cfg["depth"], cfg["attention"]), []).append(run)
    rows = []
    for (depth, attention), runs in sorted(groups.items()):
        metrics = [load_metrics(r) for r in runs]
        command = re.sub(
            r"--seed \d+",
            "--seed {" + ",".join(str(m["seed"]) for m in metrics) + "}",
            metrics[0].get("command", ""),
        )
        command = re.sub(r"-s\d+\b", "-s{seed}", command)
        rows.append(
            Row(
                depth,
                attention,
                [m["top1"] for m in metrics],
                [m["step"] for m in metrics],
                np.array([json.loads((r / SIMILARITY).read_text()) for r in runs]),
                command,
            )
        )
    return rows


def table(rows: list[Row]) -> list[str]:
    """Markdown: top-1 and last-layer similarity as mean +- std over seeds, per row."""
    lines = [
        "| depth | attention | seeds | steps (mean) | top-1 % (mean +- std) | "
        "last-layer similarity (mean +- std) | max over layers (mean) | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc, acc_sd = Row.mean_std([100 * v for v in r.top1])
        last, last_sd = Row.mean_std(r.similarity[:, -1])
        lines.append(
            f"| {r.depth} | {r.attention} | {len(r.top1)} | "
            f"{statistics.fmean(r.steps):.0f} | {acc:.2f} +- {acc_sd:.2f} | "
            f"{last:.3f} +- {last_sd:.3f} | {r.similarity.max(1).mean():.3f} | "
            f"`{r.command}` |"
        )
    return lines


def per_layer(rows: list[Row]) -> list[str]:
    """Markdown bullets: each layer's mean +- std similarity."""
    return [
        f"- depth {r.depth}, {r.attention}: "
        + ", ".join(
            f"{m:.3f}+-{s:.3f}"
            for m, s in zip(
                r.similarity.mean(0),
                r.similarity.std(0, ddof=1) if len(r.top1) > 1 else np.zeros(r.depth),
                strict=False,
            )
        )
        for r in rows
    ]


def plot(rows: list[Row], path: Path) -> None:
    """One panel per depth: mean per-layer similarity with a +-1 std band per attention."""
    depths = sorted({r.depth for r in rows})
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 3.6), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=False):
        for r in (r for r in rows if r.depth == depth):
            mean, std = r.similarity.mean(0), r.similarity.std(0)
            layers = np.arange(1, depth + 1)
            acc = 100 * statistics.fmean(r.top1)
            ax.plot(layers, mean, marker="o", ms=3, label=f"{r.attention} (top-1 {acc:.1f}%)")
            ax.fill_between(layers, mean - std, mean + std, alpha=0.25)
        finish_panel(ax, f"Fashion-MNIST ViT, depth {depth}, {len(r.top1)} seeds")
    save_figure(fig, path)


def finish_panel(ax: Axes, title: str) -> None:
    """Title, axis labels, grid and legend of one per-layer similarity panel."""
    ax.set_title(title)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean pairwise cosine similarity")
    ax.grid(alpha=0.3)
    ax.legend()


def save_figure(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(folder: Path, png: Path) -> list[str]:
    """The RESULTS.md section of the study (plot written to png); [] when there are no runs."""
    rows = load_rows(folder) if folder.is_dir() else []
    if not rows:
        return []
    plot(rows, png)
    return [
        "",
        "## Depth study: NeuTRENO vs softmax at depth 6, 12, 24 (3 seeds each)",
        "",
        "Same width, recipe, seed (so initial weights and data order) and wall-time budget "
        "within each pair, all runs at once on one GPU; similarity on 1,000 test images. "
        "Produced by `python -m training.report` from the runs of `bench/gpu_train.sh`.",
        "",
        *table(rows),
        "",
        f"![depth study]({png.name})",
        "",
        "Per-layer similarity:",
        "",
        *per_layer(rows),
    ]

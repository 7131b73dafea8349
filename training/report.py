"""`python -m training.report`: the NeuTRENO vs softmax study, written to docs/RESULTS.md + a PNG.

For each pair of checkpoints trained with the same recipe (attention="neutreno" vs "softmax"),
and for the shipped models, it reads the final metrics and measures the per-layer mean pairwise
cosine similarity of token
vectors (models.diagnostics) on held-out data: 1,000 Fashion-MNIST test images for the
classifier, 64 windows of Revelation for the LM, 200 test scenes for the segmenter.
Everything after the MARKER line of an existing report (the written analysis) is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from models.checkpoint import load_checkpoint, load_metrics  # noqa: E402
from models.diagnostics import model_similarity  # noqa: E402
from models.lm import CausalLM  # noqa: E402
from models.segmenter import Segmenter  # noqa: E402
from models.vit import ViT  # noqa: E402
from training import depth_study  # noqa: E402
from training.data import fashion, scenes  # noqa: E402


def probe_inputs(family: str, data_dir: str) -> torch.Tensor:
    """Held-out inputs on which token similarity is measured."""
    if family == "vit":
        images, _ = fashion.load_split("test")
        return torch.from_numpy(fashion.normalize(images[:1000]))
    if family == "segmenter":
        items, labels = fashion.load_split("test")
        images, _ = scenes.make_scenes(200, items, labels, seed=10_000)
        return torch.from_numpy(fashion.normalize(images))
    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    ids = torch.tensor(tok.encode((Path(data_dir) / "test.txt").read_text()).ids)
    n = min(64, len(ids) // 128)
    return ids[: n * 128].reshape(n, 128)


def study(folder: Path, data_dir: str) -> dict[str, Any]:
    """Metrics, config and per-layer similarity of one checkpoint."""
    model, cfg = load_checkpoint(folder)
    inputs = probe_inputs(cfg.family, data_dir)
    with torch.no_grad():
        if isinstance(model, Segmenter):
            sims = model_similarity(model.encoder, inputs)
        else:
            assert isinstance(model, ViT | CausalLM), type(model)  # models.registry.FAMILIES
            sims = model_similarity(model, inputs)
    return {"folder": folder, "cfg": cfg, "metrics": load_metrics(folder), "similarity": sims}


def headline(run: dict[str, Any]) -> str:
    m, fam = run["metrics"], run["cfg"].family
    if fam == "vit":
        return f"top-1 {100 * m['top1']:.2f}%"
    if fam == "segmenter":
        return f"mIoU {m['miou']:.3f} (pixel acc. {100 * m['pixel_accuracy']:.1f}%)"
    return f"{m['test_bpc']:.3f} bpc (ppl {m['test_perplexity']:.1f})"


def plot(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (title, runs) in zip(axes[0], groups.items(), strict=False):
        for run in runs:
            sims = run["similarity"]
            ax.plot(
                range(1, len(sims) + 1),
                sims,
                marker="o",
                label=f"{run['cfg'].attention} (lam={run['cfg'].fidelity_lam})",
            )
        depth_study.finish_panel(ax, title)
    depth_study.save_figure(fig, path)


MARKER = "<!-- generated above by python -m training.report; written analysis below -->"


def robustness_section(path: Path) -> list[str]:
    """The framing cases of training.robustness (a JSON it wrote) as a markdown table."""
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    lines = [
        "",
        "## Pictures not prepared like the training data (issue 17)",
        "",
        "Each picture goes through the service's decoding and resize (`bilinear`, the old "
        "bundles' method, vs `area`, the new one); classifier: top-1 on the first "
        "2,000 test items, segmenter: mIoU on 500 pictures. Produced by "
        "`python -m training.robustness`.",
        "",
        "| checkpoint | case | bilinear | area |",
        "| --- | --- | --- | --- |",
    ]
    for folder, cases in results.items():
        for case, by_method in cases.items():
            lines.append(
                f"| {folder} | {case} | {by_method['bilinear']:.4f} | {by_method['area']:.4f} |"
            )
    return lines


def write_report(
    groups: dict[str, list[dict[str, Any]]], png: Path, out: Path, extra: list[str] | None = None
) -> None:
    lines = [
        "# Results: NeuTRENO vs softmax attention",
        "",
        "One run per row, same seed, data order and step budget within each pair; device",
        "(the 2-core CPU machine or one GPU) with the wall time. Produced by",
        "`python -m training.report`.",
        "",
        "| model | attention | lam | params | held-out result | last-layer similarity "
        "| wall time | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for runs in groups.values():
        for r in runs:
            m, cfg = r["metrics"], r["cfg"]
            lines.append(
                f"| {cfg.name} (depth {cfg.depth}) | {cfg.attention} | {cfg.fidelity_lam} | "
                f"{m.get('parameters', 0):,} | {headline(r)} | {r['similarity'][-1]:.3f} | "
                f"{m.get('wall_time_s', 0) / 60:.1f} min ({m.get('device', 'cpu')}) | "
                f"`{m.get('command', '')}` |"
            )
    lines += [
        "",
        f"![per-layer token similarity]({png.name})",
        "",
        "## Per-layer token cosine similarity",
        "",
    ]
    for title, runs in groups.items():
        for r in runs:
            vals = ", ".join(f"{v:.3f}" for v in r["similarity"])
            lines.append(f"- {title}, {r['cfg'].attention}: {vals}")
    lines += extra or []
    old = out.read_text() if out.exists() else ""
    analysis = old.split(MARKER, 1)[1] if MARKER in old else "\n"
    out.write_text("\n".join(lines) + "\n\n" + MARKER + analysis)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--data-dir", default="data/kjv")
    ap.add_argument("--out", default="docs/RESULTS.md")
    ap.add_argument(
        "--depth-study",
        default="checkpoints/depth-study",
        help="run folders of the depth study (training.gpu_runs)",
    )
    ap.add_argument(
        "--robustness",
        default="checkpoints/robustness.json",
        help="results of python -m training.robustness --out",
    )
    args = ap.parse_args(argv)
    root = Path(args.checkpoints)
    studies = {  # title -> checkpoint folders; the pairs share seed, data order and budget
        "Fashion-MNIST ViT, depth 12": ["vit-fashion-neutreno", "vit-fashion-softmax"],
        "KJV language model": ["lm-kjv-neutreno", "lm-kjv-softmax"],
        "Shipped language model": ["kjv-lm"],
        "Shipped classifier (conv stem, depth 6)": ["fashion-classifier"],
        "Shipped segmenter (encoder)": ["fashion-segmenter"],
    }
    groups = {}
    for title, names in studies.items():
        runs = [
            study(root / name, args.data_dir)
            for name in names
            if (root / name / "model.safetensors").exists()
        ]
        if runs:
            groups[title] = runs
    out = Path(args.out)
    png = out.with_name("oversmoothing.png")
    plot(groups, png)
    extra = [
        *depth_study.section(Path(args.depth_study), out.with_name("depth_study.png")),
        *robustness_section(Path(args.robustness)),
    ]
    write_report(groups, png, out, extra)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

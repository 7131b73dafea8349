"""`neutreno train`: one training entry point for classifier, segmenter and language model.

Runs single-process or under torchrun (DistributedDataParallel; gloo on CPU, nccl on GPU; bf16
autocast on GPU). Writes the checkpoint (safetensors + config.json), train_state.pt for resume,
metrics.jsonl (one line per evaluation) and metrics.json (final) into --out. A non-empty --out
is refused unless --resume continues it (config from its config.json) or --force starts it over.

    neutreno train vit-fashion --out checkpoints/my-classifier --epochs 6
    torchrun --nproc-per-node 2 -m training.train vit-fashion --out runs/ddp --max-steps 5
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from models.checkpoint import SAMPLE_SIZE, STATE, init_from, save_checkpoint
from models.config import ModelConfig
from models.registry import VARIANTS, build_model, get_config, list_models
from neutreno.command import ArgumentParser, CommandError, run
from training import runs
from training.tasks import Task, make_task
from training.tasks.base import Metrics


@dataclass
class Dist:
    """Process-group facts: rank, world size and the device this process trains on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the torchrun process group when WORLD_SIZE is set (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, torch.device(f"cuda:{local}" if cuda else "cpu"))


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of base."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(
        prog="neutreno train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "model",
        choices=list_models(),
        metavar="model",
        help=f"registered variant: {', '.join(list_models())}",
    )
    ap.add_argument("--out", required=True, help="checkpoint folder (new, or --resume / --force)")
    ap.add_argument(
        "--attention",
        choices=["neutreno", "softmax"],
        help="default neutreno (on --resume: the checkpoint's)",
    )
    ap.add_argument("--lam", type=float, help="fidelity weight (default: the variant's)")
    ap.add_argument("--depth", type=int, help="override the variant's depth")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set img_size=32 (repeatable)",
    )
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    ap.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="wall-time budget of the training loop: the LR schedule runs on "
        "max(step / total, elapsed / limit) and training stops at the limit",
    )
    ap.add_argument("--no-amp", action="store_true", help="train in float32 on GPU too")
    ap.add_argument(
        "--keep-best",
        metavar="METRIC",
        help="also keep the checkpoint with the best METRIC so far in --out/best "
        "(e.g. validation_bpc: lower is better; top1, miou: higher)",
    )
    ap.add_argument(
        "--framing",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="classifier/segmenter: fraction of each batch drawn at other scales "
        "and positions (training.data.framing)",
    )
    ap.add_argument(
        "--enlarged",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="segmenter: fraction of each batch's standard scenes seen as a 2-4x larger "
        "photo is after the service's resize (training.data.framing.rephotographed)",
    )
    ap.add_argument(
        "--doc-starts",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="language model: fraction of each batch's windows that are the end-of-text token "
        "followed by a line (document) start, as lm-evaluation-harness scores documents",
    )
    ap.add_argument("--batch-size", type=int, default=128, help="per process")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="Fashion-MNIST IDX folder, or the prepared KJV folder")
    ap.add_argument(
        "--eval-every", type=int, default=0, help="steps between evaluations (0: per epoch)"
    )
    ap.add_argument(
        "--eval-limit", type=int, help="classification: evaluate on the first N test images"
    )
    ap.add_argument("--threads", type=int, help="torch intra-op threads")
    ap.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights where names match, e.g. a trained "
        "ViT classifier as a Segmenter's encoder",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out/train_state.pt with --out/config.json's architecture",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="delete the checkpoint already in --out and train from scratch",
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def build_config(args: argparse.Namespace) -> ModelConfig:
    """The variant with the flags applied, or on --resume the checkpoint's own config."""
    flags = {"attention": args.attention, "lam": args.lam, "depth": args.depth}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_overrides(args.set))
    runs.check_overrides(VARIANTS[args.model], overrides)
    if args.resume:
        return runs.resumed_config(Path(args.out), args.model, overrides)
    return get_config(args.model, **overrides)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["img_size=32", "attention=softmax"] -> {"img_size": 32, "attention": "softmax"}."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def task_options(args: argparse.Namespace, cfg: ModelConfig) -> dict[str, Any]:
    """Task keyword arguments from the command line (only those the model's task takes)."""
    options: dict[str, Any] = {}
    if cfg.family == "vit" and args.eval_limit:
        options["eval_limit"] = args.eval_limit
    if args.framing:
        if cfg.family not in ("vit", "segmenter"):
            raise SystemExit("--framing applies to the classifier and the segmenter")
        options["framing"] = args.framing
    if args.enlarged:
        if cfg.family != "segmenter":
            raise SystemExit("--enlarged applies to the segmenter")
        options["enlarged"] = args.enlarged
    if args.doc_starts:
        if cfg.family != "lm":
            raise SystemExit("--doc-starts applies to the language model")
        options["doc_starts"] = args.doc_starts
    return options


HIGHER_IS_BETTER = ("top1", "miou", "pixel_accuracy")


def is_best(log: list[dict[str, Any]], metric: str) -> bool:
    """Whether the last evaluation in `log` is the best of all so far on `metric`."""
    values = [entry[metric] for entry in log]
    best = max(values) if metric in HIGHER_IS_BETTER else min(values)
    return values[-1] == best


def schedule_step(
    step: int, total: int, elapsed: float, time_limit: float | None, warmup: int
) -> int:
    """The step the LR schedule is at: `step` during warm-up or without a time limit, else
    further on when the wall-time budget is spent faster than the step budget, so a
    time-limited run (give it a large --epochs) still anneals to its end."""
    if not time_limit or step < warmup:
        return step
    return max(step, int(total * min(1.0, elapsed / time_limit)))


def evaluate(task: Task, model: nn.Module, env: Dist) -> Metrics:
    """Evaluate on rank 0 only (the held-out sets are small)."""
    if not env.main:
        return {}
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model)
    model.train()
    return metrics


def train(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """Train, evaluate and checkpoint; returns this rank's model and the final metrics (rank 0)."""
    env = setup_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    out = Path(args.out)
    runs.guard_out(out, args.resume, args.force)
    runs.check_init(args.init)
    cfg = build_config(args)
    runs.check_data(cfg, args.data_dir)
    if args.force and env.main:
        runs.clear_out(out)
    try:
        task = make_task(cfg, args.data_dir, args.seed, **task_options(args, cfg))
    except (FileNotFoundError, ValueError) as exc:  # the paper tasks' data checks
        raise CommandError(f"{exc}; docs/PAPER_SCALE.md says how to get the data") from None
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        task.to(env.device)
    model = build_model(cfg)
    if args.init:
        init_from(model, args.init)
    model = model.to(env.device)
    raw_model = model
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=args.lr,
        weight_decay=args.weight_decay,
        betas=(0.9, 0.98),
        fused=env.device.type == "cuda",
    )
    sample = task.sample(SAMPLE_SIZE)
    steps_per_epoch = task.steps_per_epoch(args.batch_size, env.world)
    total = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
    step, log, state = 0, [], None
    if args.resume:
        state = torch.load(out / STATE, map_location=env.device, weights_only=False)
        raw_model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, log = state["step"], state["log"]
    history = runs.previous_runs(out, state)
    before = sum(r["wall_time_s"] for r in history)  # seconds spent by earlier runs
    current = runs.new_run(args.argv, step, args.init)
    history.append(current)
    if env.world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    amp = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=env.device.type == "cuda" and not args.no_amp
    )
    eval_every = args.eval_every or steps_per_epoch
    bar = tqdm(
        total=total,
        initial=step,
        disable=args.no_progress or not env.main,
        desc=f"{cfg.name} {cfg.attention}",
        dynamic_ncols=True,
    )
    started = time.time()
    model.train()
    while step < total:
        epoch = step // steps_per_epoch
        skip = step - epoch * steps_per_epoch  # resume inside an epoch
        taken = 0
        for i, (x, y) in enumerate(task.batches(epoch, args.batch_size, env.rank, env.world)):
            if i >= steps_per_epoch:
                break  # an epoch is exactly steps_per_epoch steps
            if i < skip:
                continue
            taken += 1
            for group in opt.param_groups:
                group["lr"] = lr_at(
                    schedule_step(step, total, time.time() - started, args.time_limit, args.warmup),
                    total,
                    args.lr,
                    args.warmup,
                )
            with amp:
                loss = task.loss(model, (x.to(env.device), y.to(env.device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if not bar.disable:  # .item() waits for the device: only when someone watches
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            if args.time_limit and time.time() - started >= args.time_limit:
                total = step  # out of time: evaluate, checkpoint and stop here
            if step % eval_every == 0 or step == total:
                metrics = evaluate(task, raw_model, env)
                if env.main:
                    current.update(to_step=step, wall_time_s=round(time.time() - started, 3))
                    entry = {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "loss": loss.item(),
                        "elapsed_s": before + time.time() - started,
                        **metrics,
                    }
                    log.append(entry)
                    save_checkpoint(out, raw_model, cfg, task.facts, sample=sample)
                    _write_progress(out, raw_model, opt, step, log, entry, history)
                    if args.keep_best and is_best(log, args.keep_best):
                        save_checkpoint(out / "best", raw_model, cfg, task.facts, entry, sample)
            if step >= total:
                break
        if taken == 0:
            raise RuntimeError(
                f"epoch {epoch} yielded no batch after {skip}: the task's "
                "steps_per_epoch overstates its batches"
            )
    bar.close()
    final = dict(log[-1]) if log else {}
    if env.main:
        current.update(to_step=step, wall_time_s=round(time.time() - started, 3))
        final.update(_run_facts(args, env, raw_model))
        final.update(runs.history_facts(history))
        save_checkpoint(out, raw_model, cfg, task.facts, final, sample)
        tokenizer = Path(args.data_dir or "data/kjv") / "tokenizer.json"
        if cfg.family == "lm" and tokenizer.exists():
            shutil.copy(tokenizer, out / "tokenizer.json")
    if env.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return raw_model, final


def _write_progress(
    out: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    log: list[dict[str, Any]],
    entry: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """Resumable state (with the run history) + one metrics.jsonl line after each evaluation,
    next to the checkpoint just saved."""
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "log": log,
            "runs": history,
        },
        out / STATE,
    )
    with open(out / runs.LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _run_facts(args: argparse.Namespace, env: Dist, model: nn.Module) -> dict[str, Any]:
    """What describes this run (device, size, seed), stored in metrics.json and the bundle
    manifest; `runs.history_facts` adds the commands, data.json the data."""
    return {
        "world_size": env.world,
        "device": env.device.type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.resume and args.init:
        raise CommandError(
            "--init starts a new run from another checkpoint's weights; "
            "--resume continues --out's own run: pass one of them"
        )
    args.argv = argv
    _, metrics = train(args)
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run("neutreno train", main, sys.argv[1:]))

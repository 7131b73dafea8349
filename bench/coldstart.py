"""Cold start and resident memory: `neutreno bench coldstart`.

Starts `neutreno serve` several times on the model repository and measures the time from
process start to the first /readyz 200 (imports, bundle validation, ORT session creation,
warm-up, worker start), and the server's resident set size (VmRSS, and VmHWM, the peak) once
ready and again after one request to every model. The same is done with each model alone in a
repository, to attribute memory to models, and the import time of the serving stack is measured
on its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

from bench.common import ROOT, machine, print_markdown, request_bodies
from bench.live_server import LiveServer
from export.bundle import CLASSIFICATION, SEGMENTATION


def exercise(url: str, models: dict[str, str]) -> None:
    """One request to every loaded model, so lazily allocated buffers exist."""
    image = json.loads(request_bodies(1)[0])["image"]
    for name, task in models.items():
        if task == CLASSIFICATION:
            r = httpx.post(f"{url}/v1/models/{name}/classify", json={"image": image}, timeout=60)
        elif task == SEGMENTATION:
            r = httpx.post(f"{url}/v1/models/{name}/segment", json={"image": image}, timeout=60)
        else:
            r = httpx.post(
                f"{url}/v1/completions",
                timeout=60,
                json={"model": name, "prompt": "In the beginning", "max_tokens": 16},
            )
        r.raise_for_status()


def one_start(repository: Path, env: dict[str, str]) -> dict[str, float]:
    """Start to ready and RSS when ready, after one request per model, and at peak. An empty
    repository never becomes ready (no bundles): then it is time to /healthz and its RSS."""
    empty = not any(p.is_dir() for p in repository.iterdir())
    with LiveServer(repository, env) as server:
        if empty:
            ready_s = server.wait_until(
                lambda: httpx.get(server.url + "/healthz", timeout=2).status_code == 200,
                "/healthz 200",
                timeout=300,
                interval=0.01,
            )
        else:
            ready_s = server.wait_ready(timeout=300, interval=0.01)
        row = {"ready_s": ready_s}
        memory = server.memory_mib()
        row["rss_ready_mib"] = memory["VmRSS"]
        if not empty:
            models = httpx.get(server.url + "/v1/models").json()["data"]
            exercise(server.url, {m["id"]: m["task"] for m in models})
            memory = server.memory_mib()
            row["rss_used_mib"] = memory["VmRSS"]
        row["hwm_mib"] = memory["VmHWM"]
    return row


def import_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); import service.frontend.app, uvicorn; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return float(out)


def single_model_repositories(repository: Path, tmp: Path) -> dict[str, Path]:
    """A repository per model (symlinks), to attribute start time and memory."""
    repos = {}
    for model in sorted(p for p in repository.iterdir() if p.is_dir()):
        repo = tmp / model.name
        repo.mkdir()
        (repo / model.name).symlink_to(model.resolve())
        repos[model.name] = repo
    return repos


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="neutreno bench coldstart", description=__doc__.splitlines()[0]
    )
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = {"NEUTRENO_DEVICE": "cpu"}
    imports = [import_seconds() for _ in range(args.runs)]
    full = [one_start(args.repository, env) for _ in range(args.runs)]
    print(f"all models: {full}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        singles = {
            name: one_start(repo, env)
            for name, repo in single_model_repositories(args.repository, Path(tmp)).items()
        }
        empty = Path(tmp, "empty")
        empty.mkdir()
        none = one_start(empty, env)
    models = sorted(singles)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    lines = [
        f"Repository `{args.repository}` ({', '.join(models)}); CPU execution provider; "
        f"median of {args.runs} starts. Machine: {machine()}.",
        "",
        "| repository | process start -> /readyz 200 | RSS when ready | RSS after one request "
        "per model | peak RSS (VmHWM) |",
        "| :--- | ---: | ---: | ---: | ---: |",
        f"| all {len(models)} models | {med(full, 'ready_s'):.2f} s (min "
        f"{min(r['ready_s'] for r in full):.2f}, max {max(r['ready_s'] for r in full):.2f}) | "
        f"{med(full, 'rss_ready_mib'):.0f} MiB | {med(full, 'rss_used_mib'):.0f} MiB | "
        f"{med(full, 'hwm_mib'):.0f} MiB |",
    ]
    for name in models:
        r = singles[name]
        lines.append(
            f"| {name} only | {r['ready_s']:.2f} s | {r['rss_ready_mib']:.0f} MiB | "
            f"{r['rss_used_mib']:.0f} MiB | {r['hwm_mib']:.0f} MiB |"
        )
    lines.append(
        f"| no models (process + stack) | {none['ready_s']:.2f} s | "
        f"{none['rss_ready_mib']:.0f} MiB | - | {none['hwm_mib']:.0f} MiB |"
    )
    lines += [
        "",
        f"Importing the serving stack (`import service.frontend.app, uvicorn`) alone takes "
        f"{np.median(imports):.2f} s of that start time.",
    ]
    print_markdown("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

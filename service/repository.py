"""Finding, validating and loading the bundles of a model repository.

Layout: `<root>/<model>/<version>/`; the highest integer version of each model is served. Every
bundle is validated with `export.bundle.load_bundle` (the contract in docs/BUNDLE_FORMAT.md)
before a session is created. A broken bundle does not stop the service: it is recorded with the
reason, the healthy models serve, and /readyz names the broken one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from export.bundle import load_bundle
from service.runtime import ModelRuntime
from service.settings import Settings

log = logging.getLogger("neutreno.service")


@dataclass
class Repository:
    """Loaded models by name and, for the ones that failed, why."""

    root: Path
    models: dict[str, ModelRuntime] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def latest_versions(root: Path) -> dict[str, Path | None]:
    """Each model folder mapped to its highest integer version folder (None when it has none)."""
    found: dict[str, Path | None] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [v for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()
                    and int(v.name) > 0]
        found[model_dir.name] = max(versions, key=lambda v: int(v.name), default=None)
    return found


def load_model(name: str, path: Path, settings: Settings) -> ModelRuntime:
    """Validate one bundle, open its session and warm it up; raises with the reason."""
    bundle = load_bundle(path)
    model = ModelRuntime(bundle.path, bundle.manifest, settings)
    if model.name != name:
        raise ValueError(f"manifest name {model.name!r} does not match its folder {name!r}")
    if settings.warmup:
        model.warmup(settings.buckets(model.device) if model.task != "text-generation" else ())
    return model


def load_repository(settings: Settings) -> Repository:
    """Load every model; failures are collected, not raised."""
    repo = Repository(settings.model_repository)
    for name, path in latest_versions(settings.model_repository).items():
        if path is None:
            repo.failures[name] = f"{name}: no positive integer version folder"
            continue
        try:
            repo.models[name] = load_model(name, path, settings)
        except Exception as exc:  # every failure becomes a named reason, never a crash
            repo.failures[name] = f"{path}: {exc}"
            log.error("model %s not loaded: %s", name, exc)
    if not repo.models and not repo.failures:
        repo.failures["<repository>"] = f"no model bundles in {settings.model_repository}"
    return repo

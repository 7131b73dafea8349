"""Finding, validating and loading the bundles of a model repository.

Layout: `<root>/<model>/<version>/`. A model is served under its folder's name (the one source
of truth: a copied or renamed folder serves under its new name) from its highest integer
version that loads; a broken newer version is skipped, logged and reported by /readyz next to
the version that serves. Every bundle is validated with `export.bundle.load_bundle` (the contract
in docs/BUNDLE_FORMAT.md) before a session is created. A model with no loadable version does not
stop the service: it is recorded with the reason, the healthy models serve, and /readyz names it.

Reasons shown by /readyz name bundles as `<model>/<version>`, never by host path; the start-up
log says what serves, from where, on which device, and why anything is not loaded.

Names and links are checked before the disk is: a model name is one plain folder name
(`check_model_name`), so `..`, `.`, separators and over-long names never reach a path. A model
folder may be a symbolic link (how an operator composes a repository from bundles kept
elsewhere), but what it holds is the bundle's: a version folder linking out of its model folder
is skipped, and a bundle's own files are never links (`export.bundle`). A failure
record belongs to a model folder that exists: it is dropped when the folder goes away
(`prune`), when the model loads, or when it is unloaded. Poll mode scans a repository that may
change under it (rsync creates and deletes files as it goes): whatever vanishes mid-scan is
skipped, logged, and seen again on the next scan.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from export.bundle import MANIFEST_FILE, TEXT_GENERATION, BundleError, load_bundle
from service.engine.runtime import ModelRuntime
from service.errors import BadRequest
from service.settings import Settings

log = logging.getLogger("neutreno.service")

MAX_NAME_BYTES = 255  # a folder name (NAME_MAX on Linux)


@dataclass
class Repository:
    """Loaded models by name; why the others failed; skipped broken versions; repository-level
    problems (empty, or a model folder given in place of the repository)."""

    root: Path
    models: dict[str, ModelRuntime] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def reasons(self) -> list[str]:
        """Why the repository is not fully ready (empty when every model loaded); a failed
        model whose folder is gone is no reason."""
        failed = self._live(self.failures)
        return self.problems + [f"model {n} failed to load: {r}" for n, r in failed.items()]

    def prune(self) -> None:
        """Drop the failure and skipped-version records of model folders that are gone."""
        for records in (self.failures, self.skipped):
            for name in [n for n in records if n not in self.models and not self.has_folder(n)]:
                del records[name]
                log.info("model %s: folder gone, its failure record dropped", ascii(name))

    def has_folder(self, name: str) -> bool:
        """Whether `name` is a model folder of this repository (never raises)."""
        try:
            return (self.root / name).is_dir()
        except OSError:
            return False

    def statuses(self) -> dict[str, str]:
        """Per model: "ready" (with the skipped versions, if any) or why it is not loaded."""
        found = {n: self._ready(n, m) for n, m in self.models.items()}
        return {**found, **self._live(self.failures)}

    def _live(self, records: dict[str, str]) -> dict[str, str]:
        """The records whose model folder still exists (`prune` drops the others)."""
        return {n: r for n, r in records.items() if self.has_folder(n)}

    def _ready(self, name: str, model: ModelRuntime) -> str:
        if name not in self.skipped:
            return "ready"
        return f"ready (serving version {model.version}; {self.skipped[name]})"

    def adopt(self, name: str, fresh: Repository) -> None:
        """Take over `name` as `fresh` loaded it (its model and skipped versions)."""
        self.models[name] = fresh.models[name]
        self.failures.pop(name, None)
        self.skipped.pop(name, None)
        if name in fresh.skipped:
            self.skipped[name] = fresh.skipped[name]

    def forget(self, name: str) -> ModelRuntime | None:
        """Stop tracking `name` (unloaded); returns its model, if one was loaded."""
        self.failures.pop(name, None)
        self.skipped.pop(name, None)
        return self.models.pop(name, None)

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a model folder's name, or None: one plain path component (not `.`
    or `..`, no separator, not hidden), printable valid Unicode, at most MAX_NAME_BYTES."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode"
    if not name or size > MAX_NAME_BYTES:
        return f"it must have 1 to {MAX_NAME_BYTES} bytes of UTF-8, not {size}"
    if name.startswith(".") or "/" in name or "\\" in name:
        return "it must be a plain folder name (no separator, not starting with '.')"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return "it must not contain control or format characters"
    return None


def check_model_name(name: str) -> None:
    """400 unless `name` could name a model folder (`name_problem`); checked before any path
    is built from it."""
    if (problem := name_problem(name)) is not None:
        raise BadRequest(f"model name {ascii(name[:64])} is not valid: {problem}")


def _stays_in(folder: Path, path: Path) -> bool:
    """Whether `path` is no link, or a link whose target stays inside `folder`."""
    return not path.is_symlink() or path.resolve().is_relative_to(folder.resolve())


def _entries(folder: Path) -> list[Path]:
    """What `folder` holds; [] (logged) when it vanished or cannot be read."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        log.warning("repository scan: %s skipped (%s)", ascii(folder.name), exc.strerror)
        return []


def _listing(folder: Path, confined: bool) -> list[Path]:
    """Subfolders of `folder`; when `confined`, only those that do not link out of it."""
    found = []
    for entry in _entries(folder):
        try:
            if entry.is_dir() and (not confined or _stays_in(folder, entry)):
                found.append(entry)
            elif entry.is_symlink():
                log.warning("repository scan: %s links out of its folder; skipped", entry)
        except OSError as exc:  # removed or unreadable since the listing
            log.warning("repository scan: %s skipped (%s)", ascii(entry.name), exc.strerror)
    return found


def version_folders(model_dir: Path) -> list[Path]:
    """A model folder's positive integer version folders (none linking out of it), newest
    first."""
    versions = [
        v
        for v in _listing(model_dir, confined=True)
        if v.name.isdigit() and 0 < int(v.name) < 2**63
    ]
    return sorted(versions, key=lambda v: int(v.name), reverse=True)


def model_folders(root: Path) -> list[Path]:
    """The model folders of `root`: not hidden, validly named (others are logged)."""
    folders = []
    for folder in _listing(root, confined=False):
        if folder.name.startswith("."):
            continue
        if (problem := name_problem(folder.name)) is not None:
            log.warning("model folder %s skipped: %s", ascii(folder.name), problem)
            continue
        folders.append(folder)
    return sorted(folders)


def repository_problem(root: Path, folders: list[Path]) -> str | None:
    """Why `root` serves nothing: empty, or a model / version folder given in its place."""
    if (root / MANIFEST_FILE).is_file():
        return (
            f"model repository {root.name!r} is a bundle version folder (it holds "
            f"{MANIFEST_FILE}); point NEUTRENO_MODEL_REPOSITORY at the folder two levels up, "
            "which holds <model>/<version>/"
        )
    if folders and all(f.name.isdigit() for f in folders):
        return (
            f"model repository {root.name!r} is a model folder (it holds version folders "
            f"{', '.join(f.name for f in folders)}); point NEUTRENO_MODEL_REPOSITORY at the "
            "folder above it, which holds <model>/<version>/"
        )
    if not folders:
        return (
            f"model repository {root.name!r} has no model bundles; expected "
            "<model>/<version>/manifest.json (neutreno export writes them)"
        )
    return None


def reason(exc: Exception, path: Path) -> str:
    """An exception's message with the bundle's host path replaced by <model>/<version>."""
    text = exc.detail if isinstance(exc, BundleError) else str(exc)
    label = f"{path.parent.name}/{path.name}"
    for prefix in (str(path.resolve()), str(path)):
        text = text.replace(prefix, label)
    return " ".join(text.split())


def load_model(name: str, path: Path, settings: Settings) -> ModelRuntime:
    """Validate one bundle, open its session under the folder's name and warm it up; raises
    with the reason."""
    bundle = load_bundle(path)
    if bundle.name != name:
        log.warning(
            "bundle %s: manifest name %r differs from its folder; serving it as %r",
            path,
            bundle.name,
            name,
        )
    model = ModelRuntime(
        bundle.path, {**bundle.manifest, "name": name, "version": path.name}, settings
    )
    if settings.warmup:
        model.warmup(settings.buckets(model.device) if model.task != TEXT_GENERATION else ())
    return model


def load_newest(repo: Repository, model_dir: Path, settings: Settings) -> None:
    """Serve the newest version of `model_dir` that loads; record the broken newer ones."""
    name, broken = model_dir.name, []
    versions = version_folders(model_dir)
    for path in versions:
        try:
            repo.models[name] = load_model(name, path, settings)
            break
        except Exception as exc:  # every failure becomes a named reason, never a crash
            broken.append(f"version {path.name} not loaded: {reason(exc, path)}")
            log.error(
                "model %s version %s not loaded (%s): %s", name, path.name, path, reason(exc, path)
            )
    if not versions:
        repo.failures[name] = (
            f"no version folder: expected {name}/<positive integer>/{MANIFEST_FILE}"
        )
        log.error("model %s not loaded: %s", name, repo.failures[name])
    elif name not in repo.models:
        repo.failures[name] = "; ".join(broken)
    elif broken:
        repo.skipped[name] = "; ".join(broken)


def load_repository(settings: Settings) -> Repository:
    """Load every model; failures are collected, not raised, and logged with the outcome."""
    root = settings.model_repository
    repo = Repository(root)
    folders = model_folders(root)
    problem = repository_problem(root, folders)
    if problem is not None:
        repo.problems.append(problem)
        log.error("%s (%s)", problem, root.resolve())
        return repo
    for model_dir in folders:
        load_newest(repo, model_dir, settings)
    log_outcome(repo)
    return repo


def log_outcome(repo: Repository) -> None:
    """One INFO line per served model (version, task, precision, folder, device), then a summary."""
    for name, model in repo.models.items():
        log.info(
            "serving %s version %s (%s, %s) from %s on %s (%s)",
            name,
            model.version,
            model.task,
            model.manifest.get("precision", model.outputs[0].dtype),
            model.path.resolve(),
            model.device,
            ", ".join(model.session.get_providers()),
        )
    log.info(
        "model repository %s: serving %s; not loaded: %s; older version serving: %s",
        repo.root.resolve(),
        ", ".join(sorted(repo.models)) or "nothing",
        ", ".join(sorted(repo.failures)) or "none",
        ", ".join(sorted(repo.skipped)) or "none",
    )


def _newest_mtime(version: Path) -> float:
    """The newest mtime among a version folder's files; files that vanish while it is read are
    skipped (logged), a folder that vanished counts as empty."""
    newest = 0.0
    for file in _entries(version):
        try:
            if file.is_file():
                newest = max(newest, file.stat().st_mtime)
        except OSError as exc:
            log.info("repository scan: %s skipped (%s)", ascii(file.name), exc.strerror)
    return newest


def folder_signatures(root: Path) -> dict[str, tuple[tuple[str, float], ...]]:
    """Per model folder, its version folders and their files' newest mtime: what poll mode
    compares to see that a model changed. Never raises for files that come and go."""
    return {
        folder.name: tuple((v.name, _newest_mtime(v)) for v in version_folders(folder))
        for folder in model_folders(root)
    }


def repository_index(repo: Repository) -> list[dict[str, str]]:
    """Every version folder with its state, as the repository extension lists them: READY for
    the version that serves, UNAVAILABLE with the reason for the others."""
    entries = []
    for folder in model_folders(repo.root):
        name, model = folder.name, repo.models.get(folder.name)
        for version in version_folders(folder):
            if model is not None and model.path.name == version.name:
                entries.append({"name": name, "version": version.name, "state": "READY"})
                continue
            reason = (
                repo.failures.get(name)
                or repo.skipped.get(name)
                or (f"version {model.path.name} serves" if model is not None else "not loaded")
            )
            entries.append(
                {"name": name, "version": version.name, "state": "UNAVAILABLE", "reason": reason}
            )
    return entries

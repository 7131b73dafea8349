"""Browser test fixtures: the real service (`neutreno serve`) on a free port, headless Chromium.

The service serves model_repository/ when it holds the shipped vision bundles and an LM; else the
tiny test bundles of tests/service: the vision ones written by the export package's bundle writer
and the random-weight `tiny-lm`, exported once and cached like tests/service does.

Chromium is Debian's `chromium` package (`make chromium`, part of `make test`); Playwright (the
dev extra) drives that executable and never downloads a browser. Without either, every test here
fails, saying which is missing (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.generation_helpers import add_lm, tiny_lm
from support.service_helpers import ROOT, start_server, write_test_repository
from support.tools import MissingTool

from bench.live_server import LiveServer

CHROMIUM = Path(os.environ.get("NEUTRENO_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ROOT / "test-output" / "e2e"
VISION = ("fashion-classifier", "fashion-segmenter")


def bundle_tasks(repo: Path) -> dict[str, str]:
    """model name -> task for every <model>/<version>/manifest.json under `repo`."""
    tasks = {}
    for manifest in sorted(repo.glob("*/*/manifest.json")):
        try:
            tasks[manifest.parent.parent.name] = json.loads(manifest.read_text())["task"]
        except (OSError, ValueError, KeyError):
            continue
    return tasks


def lm_name(repo: Path) -> str | None:
    return next((n for n, t in sorted(bundle_tasks(repo).items()) if t == "text-generation"), None)


@pytest.fixture(scope="session")
def e2e_repository(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    shipped = ROOT / "model_repository"
    if shipped.is_dir() and set(VISION) <= set(bundle_tasks(shipped)) and lm_name(shipped):
        return shipped
    repo = write_test_repository(tmp_path_factory.mktemp("e2e_model_repository"))
    return add_lm(repo, tiny_lm(request.config, tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def server(e2e_repository: Path) -> Iterator[LiveServer]:
    live = start_server(
        e2e_repository,
        {
            "NEUTRENO_SIMILARITY_SAMPLE_EVERY": "1",
            "NEUTRENO_MAX_QUEUE_DELAY_MS": "2",
            "NEUTRENO_API_KEY": "",
        },
    )
    try:
        live.wait_ready(timeout=120)
        yield live
    finally:
        live.stop()


@pytest.fixture
def lm(e2e_repository: Path) -> str:
    """The served text-generation model's name."""
    name = lm_name(e2e_repository)
    assert name is not None, f"no text-generation bundle in {e2e_repository}"
    return name


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one module: sync Playwright runs an event loop on the main thread, which
    must be gone before later test modules call asyncio.run."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise MissingTool(
            "playwright is not installed here (the dev extra: pip install -e '.[dev]')"
        ) from exc
    if not CHROMIUM.exists():
        raise MissingTool(
            f"{CHROMIUM} is not installed here (Debian package chromium; "
            "`make chromium` installs it)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


@contextlib.contextmanager
def open_page(browser, server: LiveServer, viewport: dict[str, int]) -> Iterator[object]:
    """A page on the service's `/` in a fresh context; fails on any JavaScript error.

    Timeouts are generous: on two cores shared with training runs a page load alone can take
    10+ s, and it is the machine, not the page, that is slow then.
    """
    context = browser.new_context(viewport=viewport, base_url=server.url)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.on(
        "console",
        lambda msg: (
            errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    pg.goto("/", wait_until="domcontentloaded")
    pg.wait_for_selector("#samples button")
    try:
        yield pg
    finally:
        context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def page(browser, server: LiveServer) -> Iterator[object]:
    """One desktop page shared by the tests of a module (page loads are the slow part)."""
    with open_page(browser, server, DESKTOP) as pg:
        yield pg


@pytest.fixture
def fresh_page(browser, server: LiveServer) -> Iterator[object]:
    """A desktop page of its own, focus at the top of the document."""
    with open_page(browser, server, DESKTOP) as pg:
        yield pg


@pytest.fixture
def phone_page(browser, server: LiveServer) -> Iterator[object]:
    with open_page(browser, server, PHONE) as pg:
        yield pg


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS

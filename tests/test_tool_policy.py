"""The suite's rules (tests/support/tools.py) on a small suite of their own, run by pytest in a
subprocess: a missing tool fails an unmarked test, skips an optional one with its reason, and
opt-in tests run only with --opt-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
import pytest
from support.tools import require_tool


def test_needs_a_missing_tool():
    require_tool("no-such-tool-here", target="some-tools", package="Debian package some-tool")


@pytest.fixture(scope="module")
def tool():
    return require_tool("no-such-tool-here", target=None, package="the tool's own release")


def test_fixture_needs_a_missing_tool(tool):
    assert tool


@pytest.mark.optional("the suite can go without it")
def test_optional(tool):
    assert tool


@pytest.mark.opt_in("make long-target: too long for make test")
def test_long():
    assert True
"""


def run_suite(tmp_path: Path, *args: str) -> str:
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "support.tools", "-p", "no:cacheprovider"]
        + ["-rA", "--strict-markers", *args, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout + result.stderr


def test_missing_tools_fail_unless_optional_and_opt_in_is_deselected(tmp_path: Path) -> None:
    out = run_suite(tmp_path)
    assert "1 failed, 1 skipped, 1 deselected, 1 error" in out, out
    assert "FAILED test_suite.py::test_needs_a_missing_tool" in out, out
    assert (
        "no-such-tool-here is not installed here (Debian package some-tool; `make some-tools` "
        "installs it). Install it; a suite that may go without it says so with "
        "@pytest.mark.optional(reason)."
    ) in out, out
    assert "ERROR test_suite.py::test_fixture_needs_a_missing_tool" in out, out
    assert "(the tool's own release; no make target installs it). Install it" in out, out
    assert "During handling" not in out, out
    assert "optional: the suite can go without it" in out, out
    assert "1 deselected: make long-target: too long for make test" in out, out


def test_opt_in_runs_the_opt_in_tests(tmp_path: Path) -> None:
    out = run_suite(tmp_path, "--opt-in", "-k", "long")
    assert "PASSED test_suite.py::test_long" in out and "1 passed" in out, out


def test_optional_needs_a_reason(tmp_path: Path) -> None:
    suite = "import pytest\n\n\n@pytest.mark.optional\ndef test_x():\n    assert True\n"
    (tmp_path / "test_bare.py").write_text(suite)
    out = run_suite(tmp_path, "-k", "test_x")
    assert "test_bare.py::test_x: @pytest.mark.optional needs a reason" in out, out

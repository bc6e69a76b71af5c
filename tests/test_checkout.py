"""A checkout on its own: without the shared/ folder beside it, the tests that replay recorded payloads skip with
the reason, and every other test still runs (collection must not stop at a missing fixture file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkout_without_shared_collects_everything_and_skips_the_fixture_tests(tmp_path):
    checkout = tmp_path / "checkout"  # tmp_path holds no shared/: this is a clone somewhere else
    # The working tree as a clone would have it (the built C extensions too: they are not what is tested here).
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "data", "__pycache__", ".pytest_cache", ".benchmarks", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env["PYTHONPATH"] = str(checkout)

    def pytest(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                               f"--basetemp={tmp_path / 'bt'}", *args], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=110)

    reason = "the shared/ folder must sit beside the checkout"
    collected = pytest("--co")
    assert collected.returncode == 0 and "error" not in collected.stdout.splitlines()[-1], collected.stdout
    ran = pytest("tests/test_fuzz.py", "tests/test_parsers.py")
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert "SKIPPED [1] tests/test_fuzz.py" in ran.stdout and reason in ran.stdout
    assert " passed" in ran.stdout.splitlines()[-1] and "Traceback" not in ran.stdout + ran.stderr
    # The long fuzz run says so in one line (and still shows its --help).
    def fuzz_long(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "benchmarks/fuzz_long.py", *args], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=60)

    assert fuzz_long("--help").returncode == 0
    run = fuzz_long()
    assert run.returncode == 1 and run.stdout == "", run.stderr
    assert run.stderr.strip().splitlines() == [f"fuzz_long.py: exchange fixtures not found at "
                                               f"{tmp_path / 'shared' / 'fixtures' / 'exchanges'}: {reason}"]

"""The sync SDK is generated from the async core, never edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import corral
from corral.sdk import _sync

REPO = Path(__file__).resolve().parents[2]


def test_sync_twin_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_sync.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_sync_files_carry_the_generated_header() -> None:
    for path in Path(_sync.__file__).parent.glob("*.py"):
        assert path.read_text().startswith("# generated from _async by scripts/gen_sync.py, do not edit\n")


def test_sync_api_has_no_coroutines() -> None:
    import inspect

    for cls in (corral.Sandbox, corral.CommandHandle, corral.sdk.Commands, corral.sdk.Filesystem):
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            assert not inspect.iscoroutinefunction(member), f"{cls.__name__}.{name} is async"
            assert not inspect.isasyncgenfunction(member), f"{cls.__name__}.{name} is an async generator"


def test_public_names() -> None:
    assert corral.TimeoutError is corral.errors.TimeoutError_
    assert corral.FileNotFoundError is corral.errors.FileNotFoundError_
    assert issubclass(corral.CommandTimeoutError, corral.TimeoutError)

"""The README's Python examples run as written (against a test server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, corral_env: ServerProcess, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # examples may write local files
    exec(compile(BLOCKS[index], f"README.md example {index + 1}", "exec"), {})
    out = capsys.readouterr().out
    block = BLOCKS[index]
    if index == 0:
        assert "hello from" in out
    elif "download_dir" in block:
        assert (tmp_path / "data" / "sub" / "b.txt").read_bytes() == b"2"
    elif "Secrets.create" in block:
        assert out.startswith("corral-secret-github_token-")
    elif "update_network" in block:
        assert out.strip().isdigit()
    elif "get_url" in block:
        assert "/ports/8000/" in out and "8000-" in out
    elif "run_code" in block:
        assert out.splitlines()[:2] == ["6", "ZeroDivisionError division by zero"] and "hi js" in out
    elif "Template" in block:  # built, then a sandbox whose start command serves HTTP once create returns
        assert "Directory listing" in out
    else:
        pytest.fail(f"README example {index + 1} has no check in this test")

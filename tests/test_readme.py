"""The README's quick start runs as written (against a test server)."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quick_start(corral_env: ServerProcess, capsys) -> None:  # type: ignore[no-untyped-def]
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "hello from" in out

"""docs/e2b.md works as written: its environment variables and Python example, against a
test server (the address and key of the page replaced by the test server's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO, ServerProcess

pytest.importorskip("e2b")
pytestmark = pytest.mark.privileged

PAGE = (REPO / "docs" / "e2b.md").read_text()


def test_readme_links_the_page() -> None:
    assert "(docs/e2b.md)" in (REPO / "README.md").read_text()


def test_page_example_runs(corral_server: ServerProcess, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shell = re.findall(r"```sh\n(.*?)```", PAGE, re.S)[0]
    exported = dict(re.findall(r"^export (E2B_\w+)=(.+?)\s*$", shell, re.M))
    assert set(exported) == {"E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN"}
    assert re.search(r"^unset E2B_DEBUG$", shell, re.M)
    for name, value in exported.items():
        value = value.replace("http://127.0.0.1:49982", corral_server.url)
        value = value.replace("$(cat /var/lib/corral/api_key)", corral_server.api_key)
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    example = re.findall(r"```python\n(.*?)```", PAGE, re.S)[0]
    exec(compile(example, "docs/e2b.md example", "exec"), {})
    out = capsys.readouterr().out
    assert "hello from" in out and "1,2,3" in out and "data.txt" in out

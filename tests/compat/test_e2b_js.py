"""The official `e2b` JavaScript SDK (npm, installed by `make e2b-sdks`) drives corral."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

JS = Path(__file__).with_name("js")


def _node_version() -> tuple[int, ...]:
    if shutil.which("node") is None:
        return ()
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip().lstrip("v")
    return tuple(int(x) for x in out.split(".") if x.isdigit())


@pytest.mark.skipif(not (JS / "node_modules" / "e2b").is_dir(), reason="run `make e2b-sdks` for the e2b JS SDK")
@pytest.mark.skipif(_node_version() < (20, 18, 1), reason="the e2b JS SDK needs node >= 20.18.1")
def test_js_sdk(e2b_vars: dict[str, str]) -> None:
    env = {**os.environ, **e2b_vars}
    env.pop("E2B_DEBUG", None)
    p = subprocess.run(["node", "flow.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-4000:]}"
    assert p.stdout.splitlines()[-1] == "ok kill"

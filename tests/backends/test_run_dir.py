"""The backend keeps its run dir in RAM (a tmpfs it mounts when the host's /run is on disk)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from corral.backends import load_backend
from corral.backends.namespace import overlay


def test_run_dir_is_tmpfs_while_in_use_and_released_after() -> None:
    run_dir = Path(f"/run/corral-test-rundir-{secrets.token_hex(3)}")

    async def scenario() -> None:
        backend = load_backend("namespace", run_dir=run_dir)
        await backend.reap_orphans(set())  # initialises the backend
        assert overlay.fs_type(run_dir) == "tmpfs"
        await backend.close()

    asyncio.run(scenario())
    assert not run_dir.exists()
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(run_dir) in line]


def test_a_run_dir_holding_sandboxes_is_never_hidden(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "someid").mkdir(parents=True)
    overlay.ensure_run_tmpfs(run_dir)
    assert (run_dir / "someid").is_dir()
    assert overlay.fs_type(run_dir) == overlay.fs_type(tmp_path)

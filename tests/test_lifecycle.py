"""Lifecycle: timeouts, kill, agent death, restart (reattach or reap), SIGTERM, and leaks."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from corral import Sandbox, SandboxNotRunningError
from helpers import ServerProcess, assert_clean, leftovers, wait_until


def _kw(server: ServerProcess) -> dict[str, str]:
    return {"api_url": server.url, "api_key": server.api_key}


def test_sandbox_expires_within_a_second_of_its_deadline(corral_server: ServerProcess) -> None:
    sbx = Sandbox.create(timeout=2, **_kw(corral_server))
    info = sbx.get_info()
    deadline = info.end_at.timestamp()
    wait_until(lambda: sbx.get_info().state == "expired", timeout=10, interval=0.05, what="expiry")
    ended = sbx.get_info()
    assert ended.ended_at is not None and ended.ended_at.timestamp() - deadline < 1.0
    assert "timeout" in (ended.reason or "")
    with pytest.raises(SandboxNotRunningError):
        sbx.commands.run("true")


def test_set_timeout_extends_and_shortens(corral_server: ServerProcess) -> None:
    sbx = Sandbox.create(timeout=2, **_kw(corral_server))
    sbx.set_timeout(60)
    time.sleep(2.5)  # past the original deadline: the extension must hold
    assert sbx.get_info().state == "running"
    sbx.set_timeout(1)
    wait_until(lambda: sbx.get_info().state == "expired", timeout=5, what="shortened timeout")


def test_killed_sandbox_is_recorded_and_leaves_nothing(corral_server: ServerProcess) -> None:
    sbx = Sandbox.create(**_kw(corral_server))
    sbx.commands.run("sleep 1000 &> /dev/null &")
    assert sbx.kill() is True
    assert sbx.get_info().state == "killed"
    assert sbx.kill() is False
    assert_clean(corral_server.run_dir, {sbx.sandbox_id}, timeout=20)


def test_agent_death_marks_the_sandbox_failed(corral_server: ServerProcess) -> None:
    sbx = Sandbox.create(**_kw(corral_server))
    # From inside, as root: kill the agent (pid 2, the only child of bubblewrap's init, pid 1).
    assert sbx.commands.run("cat /proc/1/task/1/children").stdout.split() == ["2"]
    # Delayed, so this command's own answer is not cut off by the agent's death.
    sbx.commands.run("(sleep 0.3; kill -KILL 2) >/dev/null 2>&1 &", user="root")
    wait_until(lambda: sbx.get_info().state == "failed", timeout=10, what="failed state")
    assert "agent" in (sbx.get_info().reason or "")
    assert_clean(corral_server.run_dir, {sbx.sandbox_id}, timeout=20)


def test_hundred_create_kill_cycles_leave_nothing(corral_server: ServerProcess) -> None:
    ids = set()
    with corral_server.client() as c:
        for _ in range(100):
            r = c.post("/v1/sandboxes", json={"timeout": 60})
            assert r.status_code == 201, r.text
            sid = r.json()["sandbox_id"]
            ids.add(sid)
            assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert_clean(corral_server.run_dir, ids, timeout=60)


def test_sigkill_then_restart_reattaches_or_reaps() -> None:
    server = ServerProcess(pool_size=2).start()
    try:
        kw = _kw(server)
        keep = Sandbox.create(timeout=120, **kw)
        keep.commands.run("echo kept > /home/user/state")
        short = Sandbox.create(timeout=3, **kw)
        ids = {keep.sandbox_id, short.sandbox_id}
        server.stop(signal.SIGKILL)
        time.sleep(3.5)  # `short` passes its deadline while no server runs
        server.start()
        # Reattached: the same sandbox, its files and processes intact.
        assert keep.get_info().state == "running"
        assert keep.commands.run("cat /home/user/state").stdout == "kept\n"
        wait_until(lambda: short.get_info().state == "expired", timeout=5, what="expiry after restart")
        keep.kill()
        # The pooled sandboxes of the dead server were orphans: reaped at start.
        assert_clean(server.run_dir, ids, timeout=30)
    finally:
        server.stop()
    assert not leftovers(server.run_dir), leftovers(server.run_dir)
    server.remove_dirs()


def test_sigterm_kills_every_sandbox() -> None:
    server = ServerProcess(pool_size=1).start()
    kw = _kw(server)
    boxes = [Sandbox.create(timeout=600, **kw) for _ in range(3)]
    ids = {b.sandbox_id for b in boxes}
    # uvicorn re-raises the signal after a clean shutdown, so the exit status is "killed by SIGTERM".
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert not leftovers(server.run_dir, ids), leftovers(server.run_dir, ids)
    server.start()
    try:
        states = {b.get_info().state for b in boxes}
        assert states == {"killed"}, states
    finally:
        server.stop()
        server.remove_dirs()


def test_list_filters_by_state_and_metadata(corral_server: ServerProcess) -> None:
    kw = _kw(corral_server)
    a = Sandbox.create(metadata={"team": "red", "run": "l1"}, **kw)
    b = Sandbox.create(metadata={"team": "blue", "run": "l1"}, **kw)
    try:
        red = Sandbox.list(metadata={"team": "red", "run": "l1"}, **kw)
        assert [s.sandbox_id for s in red] == [a.sandbox_id]
        both = {s.sandbox_id for s in Sandbox.list(metadata={"run": "l1"}, **kw)}
        assert both == {a.sandbox_id, b.sandbox_id}
        b.kill()
        running = {s.sandbox_id for s in Sandbox.list(state=["running"], metadata={"run": "l1"}, **kw)}
        assert running == {a.sandbox_id}
        killed = {s.sandbox_id for s in Sandbox.list(state=["killed"], metadata={"run": "l1"}, **kw)}
        assert killed == {b.sandbox_id}
    finally:
        a.kill()


def test_max_sandboxes_is_enforced() -> None:
    server = ServerProcess(pool_size=0, extra_env={"CORRAL_MAX_SANDBOXES": "2"}).start()
    try:
        with server.client() as c:
            ids = [c.post("/v1/sandboxes", json={}).json()["sandbox_id"] for _ in range(2)]
            r = c.post("/v1/sandboxes", json={})
            assert r.status_code == 429 and r.json()["code"] == "limit_exceeded"
            for sid in ids:
                c.delete(f"/v1/sandboxes/{sid}")
            assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.stop()
        server.remove_dirs()


def test_shutdown_while_a_pooled_sandbox_warms_up_leaves_nothing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A sandbox the pool has started but not yet handed out belongs to nobody: shutdown frees it."""
    import asyncio
    import secrets

    from corral.manager import Manager, pool
    from corral.settings import Settings
    from helpers import TEMPLATES_DIR

    run_dir = Path(f"/run/corral-test-{secrets.token_hex(3)}")
    warming = asyncio.Event()

    async def stuck_warm_up(handle: object) -> None:  # the pool is cancelled right here
        warming.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(pool, "_warm_up", stuck_warm_up)

    async def scenario() -> None:
        settings = Settings(
            data_dir=tmp_path, run_dir=run_dir, templates_dir=TEMPLATES_DIR, pool_size=1, api_key="x"
        )
        manager = Manager.from_settings(settings)
        await manager.start()
        await asyncio.wait_for(warming.wait(), 30)
        await manager.shutdown()

    asyncio.run(scenario())
    assert not leftovers(run_dir), leftovers(run_dir)

"""Lifecycle on every backend: create, info, timeouts, kill, failure, and nothing left behind."""

from __future__ import annotations

import pytest

from corral import Sandbox
from helpers import ServerProcess, assert_clean, wait_until

from .conftest import run

pytestmark = pytest.mark.timeout(180)


def test_create_runs_on_the_backend_asked_for(isolation: str, conn: dict[str, str]) -> None:
    with Sandbox.create(isolation=isolation, metadata={"suite": "conformance"}, **conn) as sbx:
        info = sbx.get_info()
        assert (info.isolation, info.state) == (isolation, "running")
        assert sbx.commands.run("echo hello").stdout == "hello\n"
        assert sbx.commands.run("hostname").stdout.strip() == sbx.sandbox_id
        listed = {s.sandbox_id: s for s in Sandbox.list(metadata={"suite": "conformance"}, **conn)}
        assert listed[sbx.sandbox_id].isolation == isolation


def test_kill_frees_everything(isolation: str, conn: dict[str, str], corral_server: ServerProcess) -> None:
    sbx = Sandbox.create(isolation=isolation, **conn)
    sbx.commands.run("sleep 1000 >/dev/null 2>&1 &")
    assert sbx.kill() is True
    assert sbx.get_info().state == "killed"
    assert sbx.kill() is False
    assert_clean(corral_server.run_dir, {sbx.sandbox_id}, timeout=30)


def test_timeout_expires_the_sandbox(isolation: str, conn: dict[str, str], corral_server: ServerProcess) -> None:
    sbx = Sandbox.create(isolation=isolation, timeout=60, **conn)
    sbx.set_timeout(1)
    wait_until(lambda: sbx.get_info().state == "expired", timeout=10, what="the shortened timeout")
    assert_clean(corral_server.run_dir, {sbx.sandbox_id}, timeout=30)


def test_the_agents_death_fails_the_sandbox_with_a_reason(
    isolation: str, conn: dict[str, str], corral_server: ServerProcess
) -> None:
    sbx = Sandbox.create(isolation=isolation, **conn)
    # Root inside kills the agent, the command's parent (delayed: this command's answer must get out).
    run(sbx, "(sleep 0.3; kill -KILL $PPID) >/dev/null 2>&1 &", user="root")
    wait_until(lambda: sbx.get_info().state == "failed", timeout=30, what="the failed state")
    assert sbx.get_info().reason
    assert_clean(corral_server.run_dir, {sbx.sandbox_id}, timeout=30)

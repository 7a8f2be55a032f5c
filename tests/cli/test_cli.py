"""The real ``corral`` entry point, as a subprocess, against the session's real server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Sandbox

CORRAL = [sys.executable, "-m", "corral.cli.main"]


@pytest.fixture()
def env(corral_server: Any) -> dict[str, str]:
    return {**os.environ, "CORRAL_API_URL": corral_server.url, "CORRAL_API_KEY": corral_server.api_key}


@pytest.fixture()
def sbx(corral_server: Any) -> Iterator[Sandbox]:
    with Sandbox.create(api_url=corral_server.url, api_key=corral_server.api_key) as sandbox:
        yield sandbox


def corral(env: dict[str, str], *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CORRAL, *args], env=env, input=input, capture_output=True, timeout=120)


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


# --------------------------------------------------------------------------------- sandbox


def test_sandbox_create_list_info_kill_json(env: dict[str, str]) -> None:
    tag = uuid.uuid4().hex
    created = corral(env, "sandbox", "create", "--metadata", f"suite={tag}", "--timeout", "120", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    sandbox_id = info["sandbox_id"]
    assert info["state"] == "running" and info["metadata"] == {"suite": tag}
    try:
        listed = corral(env, "sandbox", "list", "--metadata", f"suite={tag}", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [s["sandbox_id"] for s in json.loads(listed.stdout)] == [sandbox_id]

        table = corral(env, "sandbox", "list", "--state", "running")
        assert table.returncode == 0 and sandbox_id in text(table)
        assert text(table).startswith("ID")

        shown = corral(env, "sandbox", "info", sandbox_id, "--json")
        assert json.loads(shown.stdout)["sandbox_id"] == sandbox_id
        human = corral(env, "sandbox", "info", sandbox_id)
        assert "running" in text(human) and sandbox_id in text(human)
    finally:
        killed = corral(env, "sandbox", "kill", sandbox_id)
    assert killed.returncode == 0, killed.stderr
    assert json.loads(corral(env, "sandbox", "info", sandbox_id, "--json").stdout)["state"] == "killed"
    again = corral(env, "sandbox", "kill", sandbox_id)
    assert again.returncode == 1
    assert again.stderr.decode().startswith("error: sandbox_not_running: ")


def test_sandbox_create_prints_id(env: dict[str, str]) -> None:
    created = corral(env, "sandbox", "create", "--env", "A=b")
    assert created.returncode == 0, created.stderr
    sandbox_id = text(created).strip()
    try:
        assert text(corral(env, "exec", sandbox_id, "--", "printenv", "A")) == "b\n"
    finally:
        assert corral(env, "sandbox", "kill", sandbox_id).returncode == 0


def test_missing_sandbox_and_bad_key(env: dict[str, str]) -> None:
    missing = corral(env, "sandbox", "info", "sbx-nope")
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("error: sandbox_not_found: ")
    bad = corral({**env, "CORRAL_API_KEY": "wrong"}, "sandbox", "list")
    assert bad.returncode == 1
    assert bad.stderr.decode().startswith("error: unauthorized: ")
    flag = corral(env, "--api-key", "wrong", "sandbox", "list")
    assert flag.returncode == 1


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    assert corral(env, "sandbox").returncode == 2
    assert corral(env, "cp", "a", "b").returncode == 2
    assert corral(env, "exec", "some-id").returncode == 2
    assert corral(env, "sandbox", "create", "--metadata", "novalue").returncode == 2


# ------------------------------------------------------------------------------------ exec


def test_exec_output_and_exit_code(env: dict[str, str], sbx: Sandbox) -> None:
    proc = corral(env, "exec", sbx.sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3
    assert (proc.stdout, proc.stderr) == (b"out\n", b"err\n")
    ok = corral(env, "exec", sbx.sandbox_id, "--", "echo", "a b", "$HOME")
    assert (ok.returncode, ok.stdout) == (0, b"a b $HOME\n")  # words are quoted, not re-split


def test_exec_options(env: dict[str, str], sbx: Sandbox) -> None:
    proc = corral(
        env,
        "exec",
        sbx.sandbox_id,
        "--user",
        "root",
        "--cwd",
        "/tmp",
        "--env",
        "X=1",
        "--",
        'echo "$X $(pwd) $(whoami)"',
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"1 /tmp root\n"


def test_exec_streams_while_running(env: dict[str, str], sbx: Sandbox) -> None:
    # The command waits for a file that this test creates only after reading "ready" from the
    # CLI's stdout: the output must reach the terminal while the command runs.
    script = "echo ready; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo finished"
    proc = subprocess.Popen([*CORRAL, "exec", sbx.sandbox_id, "--", script], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        sbx.files.write("/tmp/go", "")
        assert proc.stdout.read() == b"finished\n"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_exec_timeout_exits_124(env: dict[str, str], sbx: Sandbox) -> None:
    proc = corral(env, "exec", sbx.sandbox_id, "--timeout", "1", "--", "echo partial; sleep 30")
    assert proc.returncode == 124
    assert proc.stdout == b"partial\n"
    assert b"timed out" in proc.stderr


# -------------------------------------------------------------------------------------- cp


def test_cp_both_ways(env: dict[str, str], sbx: Sandbox, tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) + 123)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    up = corral(env, "cp", str(local), f"{sbx.sandbox_id}:/tmp/in/up.bin")
    assert up.returncode == 0, up.stderr
    inside = sbx.commands.run("sha256sum /tmp/in/up.bin").stdout.split()[0]
    assert inside == hashlib.sha256(data).hexdigest()

    down = corral(env, "cp", f"{sbx.sandbox_id}:/tmp/in/up.bin", str(tmp_path / "down.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.bin").read_bytes() == data

    into_dir = corral(env, "cp", f"{sbx.sandbox_id}:/tmp/in/up.bin", str(tmp_path))
    assert into_dir.returncode == 0 and (tmp_path / "up.bin").read_bytes() == data

    to_dir = corral(env, "cp", str(local), f"{sbx.sandbox_id}:/tmp/")
    assert to_dir.returncode == 0 and sbx.files.get_info("/tmp/up.bin").size == len(data)


def test_cp_stdin_stdout(env: dict[str, str], sbx: Sandbox) -> None:
    up = corral(env, "cp", "-", f"{sbx.sandbox_id}:/tmp/piped", input=b"through a pipe")
    assert up.returncode == 0, up.stderr
    assert sbx.files.read("/tmp/piped") == "through a pipe"
    down = corral(env, "cp", f"{sbx.sandbox_id}:/tmp/piped", "-")
    assert (down.returncode, down.stdout) == (0, b"through a pipe")


def test_cp_missing_file(env: dict[str, str], sbx: Sandbox, tmp_path: Path) -> None:
    proc = corral(env, "cp", f"{sbx.sandbox_id}:/tmp/nope", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("error: file_not_found: ")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- run-code
def test_run_code_streams_a_cell_from_stdin_and_keeps_state(env: dict[str, str], corral_server: Any) -> None:
    with Sandbox.create(template="code-interpreter", api_url=corral_server.url, api_key=corral_server.api_key) as s:
        sid = s.sandbox_id
        ctx = corral(env, "code-context", "create", sid, "--language", "python")
        assert ctx.returncode == 0, ctx.stderr
        context_id = text(ctx).strip()
        first = corral(env, "run-code", sid, "--context", context_id, input=b"import sys\nn = 21\nprint('out')\nprint('err', file=sys.stderr)\nn * 2\n")
        assert first.returncode == 0, first.stderr
        assert text(first) == "out\n42\n" and first.stderr.decode() == "err\n"
        failed = corral(env, "run-code", sid, "--context", context_id, input=b"undefined_name")
        assert failed.returncode == 1 and b"NameError" in failed.stderr
        chart = corral(env, "run-code", sid, "--json", input=b"import matplotlib.pyplot as plt\nplt.plot([1, 2])\n")
        assert chart.returncode == 0, chart.stderr
        execution = json.loads(chart.stdout)
        assert any(r["png"] for r in execution["results"]) and execution["error"] is None
        bash = corral(env, "run-code", sid, "-l", "bash", input=b"echo $((6 * 7))")
        assert text(bash) == "42\n"
        listed = corral(env, "code-context", "list", sid)
        assert context_id in text(listed) and "bash" in text(listed)
        assert corral(env, "code-context", "remove", sid, context_id).returncode == 0
        gone = corral(env, "run-code", sid, "--context", context_id, input=b"1")
        assert gone.returncode == 1 and b"context_not_found" in gone.stderr
        assert corral(env, "code-context", "restart", sid).returncode == 2  # which context?

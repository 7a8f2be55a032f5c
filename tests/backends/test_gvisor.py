"""The gVisor backend, on real sandboxes (runsc on the ptrace platform, cgroups, nftables; no mocks).

Network tests only reach loopback and addresses inside namespaces this code or test created.
Everything is skipped, with the probe's reason, on a host where runsc cannot run a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from corral.agent import AGENT_TCP_PORT
from corral.agent.client import AgentClient
from corral.backends.base import Limits, SandboxHandle, SandboxSpec
from corral.backends.gvisor import runsc
from corral.backends.gvisor.backend import GVisorBackend
from corral.backends.namespace import cgroups
from corral.backends.namespace.backend import proc_start_time
from corral.templates import template_path
from helpers import TEMPLATES_DIR

from .nshelpers import can_connect, leftovers, ok, sandbox, sh, wait_listening
from .test_namespace import outside  # noqa: F401  (a fixture: a netns standing in for the internet)

pytestmark = pytest.mark.privileged

_PROBE = GVisorBackend(run_dir=Path("/run/corral-gvisor-probe")).probe()
if not _PROBE.ok:
    pytest.skip(f"gVisor cannot run here: {_PROBE.reason}", allow_module_level=True)


@pytest.fixture(scope="module")
def rootfs() -> Path:
    path = template_path(TEMPLATES_DIR, "base")
    assert (path / "usr/bin/python3").exists(), f"the base template at {path} has no python3"
    return path


@pytest.fixture(scope="session")
def gv_run_dir() -> Iterator[Path]:
    path = Path(f"/run/corral-test-gv-{secrets.token_hex(4)}")
    yield path
    left = [p.name for p in path.iterdir() if p.is_dir()] if path.exists() else []
    runsc_root = path.with_name(path.name + ".runsc")
    left += [f"runsc state {p.name}" for p in runsc_root.glob("*.state")]
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(runsc_root, ignore_errors=True)
    assert left == [], f"left in the run dir: {left}"


@pytest.fixture()
def backend(gv_run_dir: Path) -> Iterator[GVisorBackend]:
    b = GVisorBackend(run_dir=gv_run_dir)
    yield b
    asyncio.run(b.close())


def sid(prefix: str = "g") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def gv_leftovers(backend: GVisorBackend, s: str, state: dict[str, Any] | None = None) -> list[str]:
    """The namespace backend's list, plus what runsc leaves: its state, its cgroups, its processes."""
    found = leftovers(backend, s, state)
    found += [f"runsc state {p}" for p in runsc.state_files(backend.runsc_root, s) if p.exists()]
    found += [f"cgroup {d}" for d in Path(cgroups.CGROUP_ROOT).glob(f"*/corral/{s}")]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"/{s}/bundle".encode() in (p / "cmdline").read_bytes():
                    found.append(f"process {p.name}")
            except OSError:
                pass
    return sorted(set(found))


async def wait_dead(backend: GVisorBackend, h: SandboxHandle, timeout: float = 30) -> None:
    await asyncio.wait_for(backend.wait_exit(h), timeout)
    assert not await backend.is_alive(h)


# ---- lifecycle -----------------------------------------------------------------------------


def test_probe_and_registry() -> None:
    from corral.backends import load_backend

    b = load_backend("gvisor", run_dir=Path("/run/corral-gvisor-probe"))
    assert isinstance(b, GVisorBackend) and b.name == "gvisor"
    assert b.probe().ok


def test_start_exec_files_stop_cleanup(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        h = await backend.start(SandboxSpec(sid(), rootfs))
        try:
            assert h.agent_socket == f"tcp:{h.state['ip']}:{AGENT_TCP_PORT}"
            agent = AgentClient(h.agent_socket)
            assert (await agent.ping())["ok"] is True
            assert await backend.is_alive(h)
            assert (await ok(h, "echo hello; echo oops >&2")) == "hello\n"
            info = await agent.write_file("/home/user/data.txt", "user", b"payload\n")
            assert info["size"] == 8
            got = b"".join([c async for c in agent.read_file("/home/user/data.txt", "user")])
            assert got == b"payload\n"
            names = {e["name"] for e in await agent.list_dir("/home/user", user="user")}
            assert "data.txt" in names
            assert (await agent.stat("/home/user/data.txt"))["owner"] == "user"
            usage = await backend.usage(h)
            assert usage.memory_used > 0 and usage.memory_limit == (512 + 1024) << 20
            assert usage.disk_total == 1024 << 20 and usage.disk_used > 0
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            await backend.stop(h)
            await asyncio.wait_for(waiter, 5)
            assert not await backend.is_alive(h)
        finally:
            await backend.cleanup(h)
        await backend.cleanup(h)  # idempotent
        assert gv_leftovers(backend, h.sandbox_id, h.state) == []

    asyncio.run(main())


def test_start_failure_reports_and_cleans_up(gv_run_dir: Path, rootfs: Path) -> None:
    bad = Path(f"/run/corral-test-gvagent-{secrets.token_hex(3)}.py")
    bad.write_text("import sys\nsys.stderr.write('agent exploded on purpose\\n')\nsys.exit(3)\n")
    bad.chmod(0o644)
    backend = GVisorBackend(run_dir=gv_run_dir, agent_path=bad)
    s = sid("fail")
    try:
        with pytest.raises(errors.SandboxFailedError, match="agent exploded on purpose"):
            asyncio.run(backend.start(SandboxSpec(s, rootfs)))
        assert gv_leftovers(backend, s) == []
    finally:
        bad.unlink()
        asyncio.run(backend.close())


def test_handle_from_state_reattaches(backend: GVisorBackend, gv_run_dir: Path, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            other = GVisorBackend(run_dir=gv_run_dir)
            h2 = other.handle_from_state(h.sandbox_id, dict(h.state))
            assert h2.agent_socket == h.agent_socket
            assert await other.is_alive(h2)
            assert (await AgentClient(h2.agent_socket).ping())["ok"]
            await other.close()

    asyncio.run(main())


# ---- identity and isolation ------------------------------------------------------------------


def test_identity_and_uid_mapping(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            out = await ok(h, "id -u; hostname; id user")
            lines = out.split("\n")
            assert lines[0] == "0" and lines[1] == h.sandbox_id and lines[2].startswith("uid=1000(user)")
            # The template's shifted owners read as root and user inside; ls -l works (compat shim).
            listing = await ok(h, "ls -ln /home; ls -l /home/user/.bashrc; stat -c '%U %G' /etc/passwd")
            assert " 1000 1000 " in listing.splitlines()[1], listing
            assert "user user" in listing and listing.strip().endswith("root root")
            # user writes its home, not /etc; root writes /etc (into the overlay only)
            code, _, err = await sh(h, "touch /etc/nope", user="user")
            assert code != 0 and "Permission denied" in err
            await ok(
                h,
                "echo mine > /home/user/mine && test -O /home/user/mine && ls -l /home/user/mine",
                user="user",
            )
            await ok(h, "echo x > /etc/root-may")
            upper = Path(h.state["disk"]) / "upper"
            assert (upper / "etc/root-may").stat().st_uid == 100000
            assert (upper / "home/user/mine").stat().st_uid == 101000
            assert not (rootfs / "etc/root-may").exists()
            # On the host, every process of the sandbox is runsc's (the sandbox's own processes
            # are tasks of gVisor's kernel, not host processes).
            for pid in cgroups.SandboxCgroup(h.state["cgroup_version"], h.sandbox_id).pids():
                exe = os.readlink(f"/proc/{pid}/exe")
                assert os.path.basename(exe).startswith("runsc") or exe == "/usr/bin/runsc", exe

    asyncio.run(main())


def test_guest_kernel_is_not_the_hosts(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            release = (await ok(h, "uname -r")).strip()
            assert release and release != os.uname().release
            assert (
                "gVisor" in await ok(h, "dmesg 2>/dev/null || cat /proc/version; true") or release == "4.4.0"
            )

    asyncio.run(main())


def test_host_proc_and_files_unreachable(backend: GVisorBackend, rootfs: Path) -> None:
    marker = Path(f"/root/corral-marker-{secrets.token_hex(4)}")
    marker.write_text("host secret")
    host_init = Path("/proc/1/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")

    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            code, out, _ = await sh(h, f"cat {marker}")
            assert code != 0 and "host secret" not in out
            found = await ok(
                h,
                f"find / -xdev -name '{marker.name}' 2>/dev/null; grep -l 'host secret' /proc/*/root{marker} 2>/dev/null; true",
            )
            assert found.strip() == ""
            # /proc is gVisor's: the sandbox's own tasks only, pid 1 is corral's init (python3)
            init = (await ok(h, "tr '\\0' ' ' < /proc/1/cmdline")).split()[0]
            assert init == "/usr/bin/python3", init
            assert init != host_init or host_init == "/usr/bin/python3"
            pids = (await ok(h, "ls /proc | grep -E '^[0-9]+$' | sort -n")).split()
            assert len(pids) <= 6, pids  # init, agent, bash, ls, grep, sort
            me = os.getpid()
            code, out, _ = await sh(h, f"cat /proc/{me}/cmdline")
            assert code != 0 or "pytest" not in out
            # no host mount is visible: gVisor's mount table has the sandbox's own mounts only
            points = {line.split()[4] for line in (await ok(h, "cat /proc/self/mountinfo")).splitlines()}
            assert not any(
                p.startswith(("/run/corral-", "/var/lib", "/work", "/sys/fs/cgroup")) for p in points
            ), points

    try:
        asyncio.run(main())
    finally:
        marker.unlink()


def test_agent_answers_only_the_host(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            # a process inside connecting to its own agent (another source address) is refused
            script = (
                "import socket\n"
                f"s = socket.create_connection(('{h.state['ip']}', {AGENT_TCP_PORT}), 2)\n"
                "s.sendall(b'\\x00' * 16)\n"
                "s.settimeout(2)\n"
                "try:\n"
                "    print('closed' if s.recv(100) == b'' else 'answered')\n"
                "except ConnectionResetError:\n"
                "    print('closed')\n"
            )
            out = await ok(h, f"python3 - <<'EOF'\n{script}EOF")
            assert out.strip() == "closed"
            assert (await AgentClient(h.agent_socket).ping())["ok"]

    asyncio.run(main())


def test_sandboxes_are_isolated_from_each_other(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with (
            sandbox(backend, rootfs, sid("a")) as a,
            sandbox(backend, rootfs, sid("b"), internet=True) as b,
        ):
            await ok(a, "echo secret-a > /tmp/a-file; echo a > /home/user/a-home")
            await ok(a, "nohup python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 &")
            await wait_listening(a, 8000)
            code, out, _ = await sh(b, "cat /tmp/a-file /home/user/a-home")
            assert code != 0 and out == ""
            assert "http.server" not in await ok(b, "ps -eo pid,args")
            assert not await can_connect(b, a.state["ip"], 8000)
            assert not await can_connect(b, a.state["host_ip"], 8000)
            assert await can_connect(a, a.state["ip"], 8000)

    asyncio.run(main())


def test_internet_switch_and_host_unreachable(
    backend: GVisorBackend,
    rootfs: Path,
    outside: tuple[str, int],  # noqa: F811
) -> None:
    ns, port = outside
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    host_port = srv.server_address[1]

    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), internet=False) as h:
            assert not await can_connect(h, "198.51.100.2", port)
            await backend.configure(h, Limits(), internet=True)
            assert await can_connect(h, "198.51.100.2", port)
            # the host itself stays unreachable, whatever the internet switch says
            assert not await can_connect(h, h.state["host_ip"], host_port)
            assert not await can_connect(h, "127.0.0.1", host_port)
            await backend.configure(h, Limits(), internet=False)
            assert not await can_connect(h, "198.51.100.2", port)
            # nothing from outside opens a connection into a sandbox
            await ok(h, "nohup python3 -m http.server 8001 --bind 0.0.0.0 >/dev/null 2>&1 &")
            await wait_listening(h, 8001)
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "python3", "-c",
                 f"import socket; socket.create_connection(('{h.state['ip']}', 8001), 1.5)"],
                capture_output=True,
            )  # fmt: skip
            assert r.returncode != 0
            resolv = await ok(h, "cat /etc/resolv.conf")
            assert "127.0.0." not in resolv
            assert h.sandbox_id in await ok(h, "cat /etc/hosts")
            # egress rules by address apply to gVisor sandboxes as to any
            await backend.set_network(h, True, [], ["198.51.100.2"])
            assert not await can_connect(h, "198.51.100.2", port)
            stats = await backend.network_stats(h)
            assert stats["blocked"] >= 1 and stats["bytes_out"] > 0

    try:
        asyncio.run(main())
    finally:
        srv.shutdown()


# ---- limits and failures ---------------------------------------------------------------------


def test_configure_writes_limits(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(
            backend, rootfs, sid(), Limits(cpu_count=1, memory_mb=256, disk_mb=32, pids=200)
        ) as h:
            await backend.configure(
                h, Limits(cpu_count=0.5, memory_mb=300, disk_mb=48, pids=150), internet=False
            )
            version = h.state["cgroup_version"]
            dirs = cgroups.cgroup_dirs(version, h.sandbox_id)
            if version == 1:
                assert (dirs[0] / "memory.limit_in_bytes").read_text().strip() == str((300 + 48) << 20)
                assert (dirs[1] / "cpu.cfs_quota_us").read_text().strip() == "50000"
                assert (dirs[2] / "pids.max").read_text().strip() == str(150 + 256)
            df = await ok(h, "df -k / | tail -1")
            assert int(df.split()[1]) == 48 * 1024

    asyncio.run(main())


def test_disk_quota(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), Limits(disk_mb=16)) as h:
            code, _, err = await sh(h, "dd if=/dev/zero of=/home/user/fill bs=1M count=64", user="user")
            assert code != 0 and "No space left on device" in err
            await ok(h, "rm /home/user/fill")

    asyncio.run(main())


async def run_until_dead(backend: GVisorBackend, h: SandboxHandle, script: str, timeout: float = 60) -> bool:
    """Run a script while watching the sandbox as the manager does: if it dies, stop it (which
    ends the streams of its dead agent). True if the sandbox died."""
    waiter = asyncio.ensure_future(backend.wait_exit(h))
    task = asyncio.ensure_future(sh(h, script, timeout=timeout))
    done, _ = await asyncio.wait({waiter, task}, timeout=timeout + 30, return_when=asyncio.FIRST_COMPLETED)
    assert done, "neither the command nor the sandbox ended"
    if waiter in done:
        await backend.stop(h)
        with pytest.raises(errors.UnavailableError):
            await asyncio.wait_for(task, 10)
        return True
    waiter.cancel()
    task.result()
    return False


def test_memory_bomb_is_contained(backend: GVisorBackend, rootfs: Path) -> None:
    """The bomb's memory is the sentry's: at the cgroup's limit the host's OOM killer ends the
    whole sandbox (gVisor 20221219 has no OOM killer of its own), which is marked with why."""
    bomb = "python3 -c 'a=[]\nwhile True: a.append(bytearray(16 << 20))'"

    async def main() -> None:
        async with (
            sandbox(backend, rootfs, sid("mem"), Limits(memory_mb=128, disk_mb=64)) as h,
            sandbox(backend, rootfs, sid("ok")) as other,
        ):
            if await run_until_dead(backend, h, bomb):
                reason = await backend.exit_reason(h)
                assert reason is not None and "out of memory" in reason, reason
            assert (await AgentClient(other.agent_socket).ping())["ok"]
            await ok(other, "true")

    asyncio.run(main())


def test_pids_limit_fails_cleanly(backend: GVisorBackend, rootfs: Path) -> None:
    """A fork bomb takes the sandbox to its pids limit. Whether gVisor refuses the forks or runsc
    dies of it (this runsc panics once the host refuses it a thread), the host and the other
    sandboxes are unharmed, the sandbox stops with a clear reason, and nothing is left."""

    async def main() -> None:
        other = await backend.start(SandboxSpec(sid("ok"), rootfs))
        h = await backend.start(SandboxSpec(sid("fork"), rootfs, Limits(pids=64)))
        try:
            died = await run_until_dead(backend, h, "bash -c ':(){ :|:& };:' ; sleep 15", timeout=20)
            if died:
                reason = await backend.exit_reason(h)
                assert reason is not None and "pids limit" in reason, reason
            else:  # gVisor refused the forks: the sandbox still serves, and stops on demand
                await ok(h, "true")
                await backend.stop(h)
            assert not await backend.is_alive(h)
            assert (await AgentClient(other.agent_socket).ping())["ok"]
            await ok(other, "true")
        finally:
            await backend.cleanup(h)
            await backend.cleanup(other)
        assert gv_leftovers(backend, h.sandbox_id, h.state) == []

    asyncio.run(main())


def test_runsc_killed_from_outside(backend: GVisorBackend, rootfs: Path) -> None:
    async def main() -> None:
        h = await backend.start(SandboxSpec(sid("kill"), rootfs, internet=True))
        try:
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            os.kill(int(h.state["pid"]), signal.SIGKILL)  # the sentry (runsc-sandbox)
            await asyncio.wait_for(waiter, 10)
            assert not await backend.is_alive(h)
            await backend.stop(h)
            with pytest.raises(errors.UnavailableError):
                await AgentClient(h.agent_socket, connect_timeout=1).ping()
        finally:
            await backend.cleanup(h)
        assert gv_leftovers(backend, h.sandbox_id, h.state) == []

    asyncio.run(main())


# ---- leftovers -------------------------------------------------------------------------------


def test_cycles_leave_nothing(backend: GVisorBackend, rootfs: Path) -> None:
    ids: list[str] = []
    timings: dict[str, list[float]] = {"start": [], "cleanup": []}

    async def main() -> None:
        for _ in range(8):
            s = sid("cyc")
            ids.append(s)
            t0 = time.perf_counter()
            h = await backend.start(SandboxSpec(s, rootfs, Limits(), internet=True))
            t1 = time.perf_counter()
            await backend.cleanup(h)
            timings["start"].append(t1 - t0)
            timings["cleanup"].append(time.perf_counter() - t1)
            assert gv_leftovers(backend, s, h.state) == []

    asyncio.run(main())
    report = ", ".join(f"{k} p50 {1000 * statistics.median(v):.1f} ms" for k, v in timings.items())
    print(f"\ngvisor backend: {report}")


def test_reap_orphans_after_crash(gv_run_dir: Path, rootfs: Path) -> None:
    async def main() -> None:
        crashed = GVisorBackend(run_dir=gv_run_dir)
        h1 = await crashed.start(SandboxSpec(sid("orphan"), rootfs, internet=True))
        h2 = await crashed.start(SandboxSpec(sid("kept"), rootfs))
        await crashed.close()  # "crash": the first server forgets everything
        fresh = GVisorBackend(run_dir=gv_run_dir)
        kept = fresh.handle_from_state(h2.sandbox_id, dict(h2.state))
        reaped = await fresh.reap_orphans({h2.sandbox_id})
        assert reaped == [h1.sandbox_id]
        assert gv_leftovers(fresh, h1.sandbox_id, h1.state) == []
        assert await fresh.is_alive(kept)
        assert (await AgentClient(kept.agent_socket).ping())["ok"]
        await fresh.cleanup(kept)
        assert gv_leftovers(fresh, h2.sandbox_id, h2.state) == []
        assert await fresh.reap_orphans(set()) == []
        await fresh.close()

    asyncio.run(main())


def test_sandbox_outlives_its_server_process(gv_run_dir: Path, rootfs: Path) -> None:
    s = sid("restart")
    code = (
        "import asyncio, json\n"
        "from pathlib import Path\n"
        "from corral.backends.base import SandboxSpec\n"
        "from corral.backends.gvisor.backend import GVisorBackend\n"
        f"b = GVisorBackend(run_dir=Path('{gv_run_dir}'))\n"
        f"h = asyncio.run(b.start(SandboxSpec('{s}', Path('{rootfs}'))))\n"
        "print(json.dumps(h.state))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import json

    state = json.loads(r.stdout)

    async def main() -> None:
        backend = GVisorBackend(run_dir=gv_run_dir)
        h = backend.handle_from_state(s, state)
        try:
            assert await backend.is_alive(h)
            assert h.sandbox_id in await ok(h, "hostname")
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            await backend.stop(h)
            await asyncio.wait_for(waiter, 5)
        finally:
            await backend.cleanup(h)
            await backend.close()
        assert gv_leftovers(backend, s, state) == []
        assert proc_start_time(int(state["pid"])) is None

    asyncio.run(main())


# ---- through a real server -----------------------------------------------------------------


def _sentry_pid(sandbox_id: str) -> int:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmdline = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[0] == b"runsc-sandbox" and any(f"/{sandbox_id}/bundle".encode() in a for a in cmdline):
                return int(p.name)
    raise AssertionError(f"no runsc-sandbox process for {sandbox_id}")


@pytest.mark.timeout(240)
def test_server_marks_a_crashed_runsc_failed_and_keeps_serving(corral_server: Any) -> None:
    """A runsc killed from outside, and one that panics at its pids limit: each sandbox is marked
    failed with the reason, its resources are freed, and the server goes on serving."""
    from corral import Sandbox
    from helpers import assert_clean, wait_until

    conn = {"api_url": corral_server.url, "api_key": corral_server.api_key}
    killed = Sandbox.create(isolation="gvisor", **conn)
    bomb = Sandbox.create(isolation="gvisor", **conn)
    try:
        os.kill(_sentry_pid(killed.sandbox_id), signal.SIGKILL)
        wait_until(lambda: killed.get_info().state == "failed", timeout=30, what="the killed sandbox failed")
        assert killed.get_info().reason
        # A fork bomb: this runsc panics when the host refuses its ptrace stubs a thread.
        with contextlib.suppress(Exception):
            bomb.commands.run("bash -c ':(){ :|:& };:'; sleep 60", timeout=90)
        wait_until(
            lambda: bomb.get_info().state == "failed", timeout=90, what="the fork-bombed sandbox failed"
        )
        reason = bomb.get_info().reason or ""
        assert "pids limit" in reason, reason
        assert_clean(corral_server.run_dir, {killed.sandbox_id, bomb.sandbox_id}, timeout=30)
        with Sandbox.create(isolation="gvisor", **conn) as fresh:  # the server keeps serving
            assert fresh.commands.run("echo alive").stdout == "alive\n"
    finally:
        for s in (killed, bomb):
            with contextlib.suppress(Exception):
                s.kill()


def test_a_shared_run_dir_each_backend_reaps_its_own(gv_run_dir: Path, rootfs: Path) -> None:
    """The manager gives every backend the same run dir: a reap by one never touches the other's."""
    from corral.backends.namespace.backend import NamespaceBackend

    async def main() -> None:
        gv, ns = GVisorBackend(run_dir=gv_run_dir), NamespaceBackend(run_dir=gv_run_dir)
        g = await gv.start(SandboxSpec(sid("shared-g"), rootfs))
        n = await ns.start(SandboxSpec(sid("shared-n"), rootfs))
        try:
            assert await ns.reap_orphans({n.sandbox_id}) == []  # the gVisor sandbox is not namespace's
            assert await gv.reap_orphans({g.sandbox_id}) == []  # nor the other way round
            assert await gv.is_alive(g) and await ns.is_alive(n)
            assert (await AgentClient(g.agent_socket).ping())["ok"] and (
                await AgentClient(n.agent_socket).ping()
            )["ok"]
            assert await gv.reap_orphans(set()) == [g.sandbox_id]
            assert await ns.reap_orphans(set()) == [n.sandbox_id]
            assert (
                gv_leftovers(gv, g.sandbox_id, g.state) == [] and leftovers(ns, n.sandbox_id, n.state) == []
            )
        finally:
            await gv.cleanup(g)
            await ns.cleanup(n)
            await gv.close()
            await ns.close()

    asyncio.run(main())

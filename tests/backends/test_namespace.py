"""The namespace backend, on real sandboxes (root, bubblewrap, cgroups, nftables; no mocks).

Network tests only reach loopback and addresses inside namespaces this code or test created.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import errors
from corral.agent.client import AgentClient
from corral.backends.base import Limits, SandboxSpec
from corral.backends.namespace import cgroups
from corral.backends.namespace.backend import NamespaceBackend
from corral.templates import template_path
from helpers import TEMPLATES_DIR

from .nshelpers import can_connect, leftovers, ok, sandbox, sh, wait_listening

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def rootfs() -> Path:
    """The base template `make test` builds (owners shifted into the sandbox uid range)."""
    path = template_path(TEMPLATES_DIR, "base")
    assert (path / "usr/bin/python3").exists(), f"the base template at {path} has no python3"
    return path


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    # Under /run and named corral-*, so leak checks that grep "corral" in /proc/mounts see ours.
    path = Path(f"/run/corral-test-{secrets.token_hex(4)}")
    yield path
    assert not [p for p in path.iterdir() if p.is_dir()] if path.exists() else True, "sandbox dirs left"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def backend(run_dir: Path) -> Iterator[NamespaceBackend]:
    b = NamespaceBackend(run_dir=run_dir)
    assert b.probe().ok, b.probe().reason
    yield b
    asyncio.run(b.close())


def sid(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# ---- lifecycle -----------------------------------------------------------------------------


def test_start_ping_stop_cleanup(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        h = await backend.start(SandboxSpec(sid(), rootfs))
        try:
            assert h.agent_socket == backend.run_dir / h.sandbox_id / "agent.sock"
            assert (await AgentClient(h.agent_socket).ping())["ok"] is True
            assert await backend.is_alive(h)
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            await backend.stop(h)
            await asyncio.wait_for(waiter, 5)
            assert not await backend.is_alive(h)
        finally:
            await backend.cleanup(h)
        await backend.cleanup(h)  # idempotent
        assert leftovers(backend, h.sandbox_id, h.state) == []

    asyncio.run(main())


def test_wait_exit_when_agent_dies(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            pid = (await AgentClient(h.agent_socket).ping())["pid"]
            with pytest.raises(errors.UnavailableError):
                await sh(h, f"kill -9 {pid}")  # the agent dies while answering
            await asyncio.wait_for(waiter, 5)
            assert not await backend.is_alive(h)

    asyncio.run(main())


def test_start_failure_reports_and_cleans_up(run_dir: Path, rootfs: Path) -> None:
    # The failing "agent" also plants a symlink to a host file where the agent log would be:
    # the error message must carry the agent's stderr, never the host file.
    marker = Path(f"/root/corral-marker-{secrets.token_hex(4)}")
    marker.write_text("host secret")
    bad = Path(f"/run/corral-test-agent-{secrets.token_hex(3)}.py")
    bad.write_text(
        f"import os, sys\nos.symlink('{marker}', '/run/corral/agent.log')\n"
        "sys.stderr.write('agent exploded on purpose\\n')\nsys.exit(3)\n"
    )
    bad.chmod(0o644)
    backend = NamespaceBackend(run_dir=run_dir, agent_path=bad)
    s = sid("fail")
    try:
        with pytest.raises(errors.SandboxFailedError, match="agent exploded on purpose") as info:
            asyncio.run(backend.start(SandboxSpec(s, rootfs)))
        assert "host secret" not in str(info.value)
        assert leftovers(backend, s) == []
    finally:
        bad.unlink()
        marker.unlink()
        asyncio.run(backend.close())


def test_agent_socket_cannot_be_redirected(backend: NamespaceBackend, rootfs: Path) -> None:
    import socket

    decoy_path = backend.run_dir.with_name(backend.run_dir.name + "-decoy.sock")
    decoy = socket.socket(socket.AF_UNIX)
    decoy.bind(str(decoy_path))
    decoy.listen()
    decoy.setblocking(False)

    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            # root inside swaps the socket for a symlink to a host socket
            await ok(
                h,
                f"mv /run/corral/agent.sock /run/corral/real.sock && ln -s {decoy_path} /run/corral/agent.sock",
            )
            assert (await AgentClient(h.agent_socket).ping())["ok"]  # still the agent
            with pytest.raises(BlockingIOError):
                decoy.accept()

    try:
        asyncio.run(main())
    finally:
        decoy.close()
        decoy_path.unlink()


def test_handle_from_state_reattaches(backend: NamespaceBackend, run_dir: Path, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            other = NamespaceBackend(run_dir=run_dir)
            h2 = other.handle_from_state(h.sandbox_id, dict(h.state))
            assert h2.agent_socket == h.agent_socket
            assert await other.is_alive(h2)
            assert other.pool.used()[h.state["ip_index"]] == h.state["dir"]
            assert (await AgentClient(h2.agent_socket).ping())["ok"]
            await other.close()

    asyncio.run(main())


def test_sandbox_outlives_its_server_process(run_dir: Path, rootfs: Path) -> None:
    s = sid("restart")
    code = (
        "import asyncio, json, sys\n"
        "from pathlib import Path\n"
        "from corral.backends.base import SandboxSpec\n"
        "from corral.backends.namespace.backend import NamespaceBackend\n"
        f"b = NamespaceBackend(run_dir=Path('{run_dir}'))\n"
        f"h = asyncio.run(b.start(SandboxSpec('{s}', Path('{rootfs}'))))\n"
        "print(json.dumps(h.state))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    state = json.loads(r.stdout)

    async def main() -> None:
        backend = NamespaceBackend(run_dir=run_dir)
        h = backend.handle_from_state(s, state)
        try:
            assert await backend.is_alive(h)
            assert (await AgentClient(h.agent_socket).ping())["ok"]
            assert h.sandbox_id in await ok(h, "hostname")
            waiter = asyncio.ensure_future(backend.wait_exit(h))  # not our child: pidfd still works
            await backend.stop(h)
            await asyncio.wait_for(waiter, 5)
        finally:
            await backend.cleanup(h)
            await backend.close()
        assert leftovers(backend, s, state) == []

    asyncio.run(main())


# ---- identity and isolation ------------------------------------------------------------------


def test_identity_hostname_and_user_mapping(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            out = await ok(h, "id -u; hostname; cat /proc/self/uid_map /proc/self/gid_map")
            lines = out.split("\n")
            assert lines[0] == "0"
            assert lines[1] == h.sandbox_id
            assert lines[2].split() == ["0", "100000", "65536"]
            assert lines[3].split() == ["0", "100000", "65536"]
            # On the host, every process of the sandbox runs as an unprivileged uid.
            cg = cgroups.SandboxCgroup(h.state["cgroup_version"], h.sandbox_id)
            pids = cg.pids()
            assert h.state["pid"] in pids and len(pids) >= 2
            for pid in pids:
                status = Path(f"/proc/{pid}/status").read_text()
                uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
                assert all(int(u) >= 100000 for u in uids), (pid, status[:200])
            # user can write its home, not /etc; root can write /etc (into the overlay only).
            code, _, err = await sh(h, "touch /etc/nope", user="user")
            assert code != 0 and "Permission denied" in err
            await ok(h, "touch /home/user/mine && test -O /home/user/mine", user="user")
            await ok(h, "echo x > /etc/root-may")
            upper = Path(h.state["disk"]) / "upper"
            assert (upper / "etc/root-may").stat().st_uid == 100000
            assert (upper / "home/user/mine").stat().st_uid == 101000
            assert not (rootfs / "etc/root-may").exists()
            # low ports and ICMP echo sockets work inside the sandbox's own netns
            await ok(h, "python3 -c \"import socket; socket.socket().bind(('0.0.0.0', 80))\"", user="user")
            await ok(h, "python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 1)\"")

    asyncio.run(main())


def test_host_files_invisible(backend: NamespaceBackend, rootfs: Path) -> None:
    marker = Path(f"/root/corral-marker-{secrets.token_hex(4)}")
    marker.write_text("host secret")

    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            code, out, _ = await sh(h, f"cat {marker}")
            assert code != 0 and "host secret" not in out
            assert marker.name not in await ok(h, "ls -a /root")
            found = await ok(
                h,
                f"find / -xdev -name '{marker.name}' 2>/dev/null; grep -l 'host secret' /proc/*/root{marker} 2>/dev/null; true",
            )
            assert found.strip() == ""
            # only the sandbox's own mounts are there (no host directory is mounted in)
            points = {line.split()[4] for line in (await ok(h, "cat /proc/self/mountinfo")).splitlines()}
            extra = {p for p in points if not p.startswith(("/dev", "/proc"))}
            assert extra == {
                "/",
                "/run/corral",
                "/usr/local/lib/corral/agent",  # the agent package, read-only
                "/etc/resolv.conf",
                "/etc/hosts",
            }

    try:
        asyncio.run(main())
    finally:
        marker.unlink()


def test_seccomp_blocks_dangerous_syscalls(backend: NamespaceBackend, rootfs: Path) -> None:
    probe = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    r = getattr(libc, name)(*args)
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
def sysc(nr, *args):
    r = libc.syscall(nr, *args)
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
os.makedirs('/tmp/m', exist_ok=True)
print('mount', call('mount', b'none', b'/tmp/m', b'tmpfs', 0, None))
print('unshare_user', call('unshare', 0x10000000))
print('unshare_ns', call('unshare', 0x00020000))
print('keyctl', sysc(250, 0, 0, 0, 0, 0))
print('bpf', sysc(321, 0, 0, 0))
print('ptrace', sysc(101, 0, 0, 0, 0))
print('clone3', sysc(435, 0, 0))
print('clone_newnet', sysc(56, 0x40000000 | 17, 0, 0, 0, 0))
print('setns', call('setns', 0, 0))
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print('fork', 'ok')
"""

    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            out = await ok(h, f"python3 - <<'EOF'\n{probe}\nEOF")
            got = dict(line.split() for line in out.strip().splitlines())
            assert got == {
                "mount": "EPERM", "unshare_user": "EPERM", "unshare_ns": "EPERM", "keyctl": "EPERM",
                "bpf": "EPERM", "ptrace": "EPERM", "clone3": "ENOSYS", "clone_newnet": "EPERM",
                "setns": "EPERM", "fork": "ok",
            }, got  # fmt: skip
            status = await ok(h, "grep -E '^(NoNewPrivs|Seccomp|CapBnd|CapEff):' /proc/self/status")
            assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
            assert "CapBnd:\t00000000a00405fb" in status  # the docker-like set only

    asyncio.run(main())


def test_no_stray_fds_inside(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid()) as h:
            own = await ok(h, "ls /proc/self/fd")
            assert own.split() == ["0", "1", "2", "3"]  # 3 is ls's own directory fd
            out = await ok(
                h,
                'for p in /proc/[0-9]*; do for f in $p/fd/*; do echo "${p#/proc/} ${f##*/} $(readlink $f)"; done; done 2>/dev/null',
            )
            bad = []
            for line in out.strip().splitlines():
                pid, fd, target = ([*line.split(" ", 2), ""])[:3]
                if any(
                    t in target for t in ("user:[", "net:[", "mnt:[", "pid:[", "cgroup:[", "uts:[", "ipc:[")
                ):
                    bad.append(line)
                if "seccomp" in target or "cgroup.procs" in target:
                    bad.append(line)
                # Only pid 1 (bwrap's init) keeps its stdout/stderr on the host-side log file.
                if target.startswith(str(backend.run_dir)) and not (pid == "1" and fd in ("1", "2")):
                    bad.append(line)
            assert bad == [], out
            # Seen from the host: no process inside shares a pipe, socket or namespace fd with
            # the server (the ready pipe's read end, the userns and seccomp fds stay outside).
            server = {
                os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if _readable(fd)
            }
            cg = cgroups.SandboxCgroup(h.state["cgroup_version"], h.sandbox_id)
            inside = [pid for pid in cg.pids() if pid != h.state["pid"]]  # the outer bwrap is outside
            assert len(inside) >= 2
            for pid in inside:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    assert ":[" not in target or target not in server, (pid, fd, target)
                    assert not target.startswith(("user:[", "net:[", "mnt:[")), (pid, fd, target)

    asyncio.run(main())


def test_sandboxes_are_isolated_from_each_other(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with (
            sandbox(backend, rootfs, sid("a")) as a,
            sandbox(backend, rootfs, sid("b"), internet=True) as b,
        ):
            await ok(a, "echo secret-a > /tmp/a-file; echo a > /etc/a-etc; echo a > /home/user/a-home")
            await ok(a, "nohup python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 &")
            await wait_listening(a, 8000)
            # files
            code, out, _ = await sh(b, "cat /tmp/a-file /etc/a-etc /home/user/a-home")
            assert code != 0 and out == ""
            listing = await ok(b, "ls -a /tmp /home/user /etc")
            assert "a-file" not in listing and "a-home" not in listing and "a-etc" not in listing
            # processes
            ps_b = await ok(b, "ps -eo pid,args")
            assert "http.server" not in ps_b
            assert len(ps_b.strip().splitlines()) <= 6  # header, bwrap init, agent, bash, ps
            # network, even with b's internet on
            assert not await can_connect(b, a.state["ip"], 8000)
            assert not await can_connect(b, a.state["host_ip"], 8000)
            # a itself still serves (the listener really is up)
            assert await can_connect(a, a.state["ip"], 8000)

    asyncio.run(main())


def _readable(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
        return True
    except OSError:
        return False


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _serve(host: str) -> tuple[http.server.ThreadingHTTPServer, int]:
    srv = http.server.ThreadingHTTPServer((host, 0), _Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def test_host_is_unreachable(backend: NamespaceBackend, rootfs: Path) -> None:
    lo, lo_port = _serve("127.0.0.1")
    anyaddr, any_port = _serve("0.0.0.0")

    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), internet=True) as h:
            host_ip = h.state["host_ip"]
            results = await asyncio.gather(
                can_connect(h, host_ip, any_port),
                can_connect(h, host_ip, lo_port),
                can_connect(h, "127.0.0.1", lo_port),
                can_connect(h, "127.0.0.1", any_port),
            )
            assert results == [False, False, False, False]
            # sanity: the listeners answer on the host
            for port in (lo_port, any_port):
                subprocess.run(
                    ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"],
                    check=True,
                )

    try:
        asyncio.run(main())
    finally:
        lo.shutdown()
        anyaddr.shutdown()


@pytest.fixture()
def outside() -> Iterator[tuple[str, int]]:
    """A netns standing in for "the internet": veth to the host, a listener on 198.51.100.2."""
    tag = secrets.token_hex(3)
    ns, veth = f"corral-test-out-{tag}", f"ctout{tag}"
    host_ip, out_ip, port = "198.51.100.1", "198.51.100.2", 8080
    script = (
        f"netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\n"
        f"addr add {host_ip}/30 dev {veth}\nlink set {veth} up\n"
    )
    subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True)
    inside = (
        f"addr add {out_ip}/30 dev eth0\nlink set eth0 up\nlink set lo up\n"
        f"route add 10.213.0.0/16 via {host_ip}\n"
    )
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=inside, text=True, check=True)
    srv = subprocess.Popen(
        ["ip", "netns", "exec", ns, "python3", "-m", "http.server", str(port), "--bind", out_ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["python3", "-c", f"import socket; socket.create_connection(('{out_ip}', {port}), 0.5)"],
                             capture_output=True).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "outside listener did not come up"
            time.sleep(0.05)
        yield ns, port
    finally:
        srv.kill()
        srv.wait()
        subprocess.run(["ip", "link", "del", veth], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_internet_switch(backend: NamespaceBackend, rootfs: Path, outside: tuple[str, int]) -> None:
    ns, port = outside

    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), internet=False) as h:
            assert not await can_connect(h, "198.51.100.2", port)
            await backend.configure(h, Limits(), internet=True)
            assert await can_connect(h, "198.51.100.2", port)
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
        async with sandbox(backend, rootfs, sid(), internet=True) as h:
            assert await can_connect(h, "198.51.100.2", port)
            # DNS config: the host's non-loopback resolvers, and a hosts file naming the sandbox
            resolv = await ok(h, "cat /etc/resolv.conf")
            assert "nameserver" in resolv and "127.0.0." not in resolv
            assert h.sandbox_id in await ok(h, "cat /etc/hosts")

    asyncio.run(main())


# ---- limits ----------------------------------------------------------------------------------


def test_configure_writes_limits(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(
            backend, rootfs, sid(), Limits(cpu_count=1, memory_mb=256, disk_mb=32, pids=200)
        ) as h:
            await backend.configure(
                h, Limits(cpu_count=0.5, memory_mb=300, disk_mb=48, pids=150), internet=False
            )
            if h.state["cgroup_version"] == 1:
                root = cgroups.CGROUP_ROOT
                assert (
                    root / "memory/corral" / h.sandbox_id / "memory.limit_in_bytes"
                ).read_text().strip() == str((300 + 48) << 20)
                assert (
                    root / "cpu/corral" / h.sandbox_id / "cpu.cfs_quota_us"
                ).read_text().strip() == "50000"
                assert (root / "pids/corral" / h.sandbox_id / "pids.max").read_text().strip() == "150"
            df = await ok(h, "df -k / | tail -1")
            assert int(df.split()[1]) == 48 * 1024

    asyncio.run(main())


def test_disk_quota(backend: NamespaceBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), Limits(disk_mb=16)) as h:
            code, _, err = await sh(h, "dd if=/dev/zero of=/home/user/fill bs=1M count=64", user="user")
            assert code != 0 and "No space left on device" in err
            size = int(await ok(h, "stat -c %s /home/user/fill"))
            assert 8 << 20 < size <= 16 << 20
            await ok(h, "rm /home/user/fill")
            await backend.configure(h, Limits(disk_mb=96), internet=False)
            await ok(h, "dd if=/dev/zero of=/home/user/fill bs=1M count=64 status=none", user="user")

    asyncio.run(main())


def test_memory_bomb_is_contained(backend: NamespaceBackend, rootfs: Path) -> None:
    bomb = "python3 -c 'a=[]\nwhile True: a.append(bytearray(16 << 20))'"

    async def main() -> None:
        async with (
            sandbox(backend, rootfs, sid("mem"), Limits(memory_mb=128)) as h,
            sandbox(backend, rootfs, sid("ok")) as other,
        ):
            try:
                code, _, _ = await sh(h, bomb, timeout=60)
                assert code != 0  # killed (by the OOM killer, possibly along with the agent)
            except errors.UnavailableError:
                pass  # the OOM killer picked the agent
            if h.state["cgroup_version"] == 1:
                oom = (
                    cgroups.CGROUP_ROOT / "memory/corral" / h.sandbox_id / "memory.oom_control"
                ).read_text()
                assert "oom_kill 0" not in oom
            assert (await AgentClient(other.agent_socket).ping())["ok"]
            await ok(other, "true")

    asyncio.run(main())


def test_fork_bomb_hits_pids_limit(backend: NamespaceBackend, rootfs: Path) -> None:
    counter = """python3 - <<'EOF'
import os, signal, time
kids = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        kids.append(pid)
except OSError as e:
    print(len(kids), e.errno)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
EOF"""

    async def main() -> None:
        async with (
            sandbox(backend, rootfs, sid("fork"), Limits(pids=64)) as h,
            sandbox(backend, rootfs, sid("ok")) as other,
        ):
            out = await ok(h, counter)
            forked, err = out.split()
            assert int(err) == 11 and 20 < int(forked) < 64  # EAGAIN at the limit
            # a real bomb, left running
            await sh(h, "nohup bash -c ':(){ :|:& };:' >/dev/null 2>&1 &")
            version = h.state["cgroup_version"]
            pids_dir = cgroups.cgroup_dirs(version, h.sandbox_id)[0 if version == 2 else 2]
            deadline = time.monotonic() + 10
            while int((pids_dir / "pids.current").read_text()) < 64:  # the bomb is at the ceiling
                assert time.monotonic() < deadline, (pids_dir / "pids.current").read_text()
                await asyncio.sleep(0.02)
            assert (await AgentClient(other.agent_socket).ping())["ok"]
            await ok(other, "true")
            t = time.perf_counter()
            await backend.stop(h)
            assert time.perf_counter() - t < 5
            assert cgroups.SandboxCgroup(h.state["cgroup_version"], h.sandbox_id).pids() == []

    asyncio.run(main())


# ---- leftovers -------------------------------------------------------------------------------


def test_cycles_leave_nothing(backend: NamespaceBackend, rootfs: Path) -> None:
    ids: list[str] = []
    timings: dict[str, list[float]] = {"start": [], "stop": [], "cleanup": []}

    async def main() -> None:
        for _ in range(20):
            s = sid("cyc")
            ids.append(s)
            t0 = time.perf_counter()
            h = await backend.start(SandboxSpec(s, rootfs, Limits(), internet=True))
            t1 = time.perf_counter()
            await backend.stop(h)
            t2 = time.perf_counter()
            await backend.cleanup(h)
            t3 = time.perf_counter()
            timings["start"].append(t1 - t0)
            timings["stop"].append(t2 - t1)
            timings["cleanup"].append(t3 - t2)
            assert leftovers(backend, s, h.state) == []

    asyncio.run(main())
    assert [x for s in ids for x in leftovers(backend, s)] == []
    report = ", ".join(f"{k} p50 {1000 * statistics.median(v):.1f} ms" for k, v in timings.items())
    print(f"\nnamespace backend: {report}")


def test_reap_orphans_after_crash(run_dir: Path, rootfs: Path) -> None:
    async def main() -> None:
        crashed = NamespaceBackend(run_dir=run_dir)
        h1 = await crashed.start(SandboxSpec(sid("orphan"), rootfs, internet=True))
        h2 = await crashed.start(SandboxSpec(sid("kept"), rootfs))
        # "crash": the first server forgets everything; a new one takes over.
        await crashed.close()
        fresh = NamespaceBackend(run_dir=run_dir)
        kept = fresh.handle_from_state(h2.sandbox_id, dict(h2.state))
        reaped = await fresh.reap_orphans({h2.sandbox_id})
        assert reaped == [h1.sandbox_id]
        assert leftovers(fresh, h1.sandbox_id, h1.state) == []
        assert await fresh.is_alive(kept)
        assert (await AgentClient(kept.agent_socket).ping())["ok"]
        await fresh.cleanup(kept)
        assert leftovers(fresh, h2.sandbox_id, h2.state) == []
        assert await fresh.reap_orphans(set()) == []
        await fresh.close()

    asyncio.run(main())

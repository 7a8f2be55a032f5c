"""Limits, networking and security on every backend: each way in is refused the same way."""

from __future__ import annotations

import platform
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import FileNotFoundError as CorralFileNotFound
from corral import Sandbox
from helpers import ServerProcess, wait_until
from world import outside_world

from .conftest import run

pytestmark = [pytest.mark.timeout(240), pytest.mark.privileged]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, str]]:
    with outside_world() as w:
        yield w.a, w.b


def status(s: Sandbox, address: str) -> str:
    r = s.commands.run(f"curl -s -o /dev/null -w '%{{http_code}}' -m 4 http://{address}/ || true", timeout=30)
    return r.stdout.strip()


# ---- the boundary -------------------------------------------------------------------------


def test_the_kernel_is_the_hosts_only_on_namespaces(isolation: str, shared: Sandbox) -> None:
    inside = shared.commands.run("uname -r").stdout.strip()
    if isolation == "namespace":
        assert inside == platform.release()  # shared kernel: the documented trade-off
    else:
        assert inside and inside != platform.release()  # a kernel of its own


def test_host_files_and_processes_are_out_of_reach(shared: Sandbox) -> None:
    tag = secrets.token_hex(4)
    marker = Path(f"/root/corral-marker-{tag}")
    marker.write_text("host secret")
    host_proc = subprocess.Popen(["sleep", f"1000.{int(tag, 16) % 1000}"])  # a host process to look for
    try:
        r = run(shared, f"cat {marker}; ls /root; find / -xdev -name '{marker.name}' 2>/dev/null", user="root")
        assert "host secret" not in r.stdout and marker.name not in r.stdout
        with pytest.raises(CorralFileNotFound):
            shared.files.read(str(marker), user="root")
        procs = run(shared, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", user="root").stdout
        assert f"1000.{int(tag, 16) % 1000}" not in procs
        assert "pytest" not in procs and "corral.cli.main" not in procs
    finally:
        host_proc.kill()
        host_proc.wait()
        marker.unlink()


def test_other_sandboxes_are_out_of_reach(isolation: str, conn: dict[str, str]) -> None:
    with Sandbox.create(isolation=isolation, **conn) as a, Sandbox.create(isolation=isolation, **conn) as b:
        tag = secrets.token_hex(4)
        a.files.write(f"/tmp/secret-{tag}", "a's secret")
        a.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 &")
        a_ip = a.commands.run("hostname -I").stdout.split()[0]
        assert run(b, f"cat /tmp/secret-{tag}").exit_code != 0
        assert run(b, f"curl -s -m 3 http://{a_ip}:8000/ >/dev/null").exit_code != 0
        ok = run(a, "for i in $(seq 100); do curl -s -m 1 -o /dev/null http://127.0.0.1:8000/ && exit 0; sleep 0.1; done; exit 1")
        assert ok.exit_code == 0


def test_the_control_api_is_out_of_reach(corral_server: ServerProcess, shared: Sandbox) -> None:
    gateway = run(shared, "ip route show default 2>/dev/null | cut -d' ' -f3").stdout.strip() or "10.213.0.1"
    for addr in ("127.0.0.1", gateway):
        r = run(shared, f"curl -s -m 3 -o /dev/null http://{addr}:{corral_server.port}/health")
        assert r.exit_code != 0, addr


# ---- limits -------------------------------------------------------------------------------


def test_a_memory_hog_dies_and_the_sandbox_lives(isolation: str, conn: dict[str, str]) -> None:
    with Sandbox.create(isolation=isolation, memory_mb=256, **conn) as s:
        r = run(s, "python3 -c 'x = bytearray(2 * 1024**3); print(len(x))'", timeout=120)
        assert r.exit_code != 0  # killed, or MemoryError: never 2 GiB inside a 256 MiB sandbox
        assert s.commands.run("echo alive").stdout == "alive\n"


def test_disk_fill_stops_at_the_quota(isolation: str, conn: dict[str, str]) -> None:
    with Sandbox.create(isolation=isolation, disk_mb=128, **conn) as s:
        r = run(s, "dd if=/dev/zero of=/home/user/big bs=1M count=600 2>&1", timeout=180)
        assert r.exit_code != 0 and "No space left" in (r.stdout + r.stderr)
        assert s.commands.run("rm /home/user/big && echo ok").stdout == "ok\n"


# ---- networking -----------------------------------------------------------------------------


def test_egress_rules_apply(isolation: str, conn: dict[str, str], world: tuple[str, str]) -> None:
    a, b = world
    with Sandbox.create(isolation=isolation, deny_out=[f"{a}/32"], **conn) as s:
        assert status(s, b) == "200"
        assert status(s, a) == "000"
        assert s.get_network().blocked >= 1
    with Sandbox.create(isolation=isolation, internet=False, allow_out=[b], **conn) as s:
        assert status(s, a) == "000"
        assert status(s, b) == "200"


def test_a_server_inside_is_reached_through_its_port_url(
    corral_server: ServerProcess, shared: Sandbox
) -> None:
    shared.files.write("/home/user/site/index.html", "from inside\n")
    shared.commands.run("cd /home/user/site && python3 -m http.server 8123 >/dev/null 2>&1 &")
    url = shared.get_url(8123, path_based=True)

    def fetch() -> str:
        try:
            return httpx.get(url, headers={"X-API-Key": corral_server.api_key}, timeout=5).text
        except httpx.HTTPError:
            return ""

    assert wait_until(lambda: fetch() == "from inside\n", timeout=60, what="the server inside") is True

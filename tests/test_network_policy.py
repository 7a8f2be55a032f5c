"""Egress rules, live updates and traffic counters, against a test "outside world": a network
namespace this test makes, with an HTTP server on two addresses, reached through corral's rules."""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from corral.backends.namespace.network import veth_name
from helpers import ServerProcess, wait_until

pytestmark = pytest.mark.privileged


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, str]]:
    """Two addresses (a, b) in a namespace of our own, both serving HTTP on port 80."""
    tag = secrets.token_hex(3)
    ns, host_if, world_if = f"crtw{tag}", f"tw{tag}h", f"tw{tag}w"
    net = f"10.250.{secrets.randbelow(200) + 20}"
    a, b = f"{net}.2", f"{net}.3"
    ip("netns", "add", ns)
    server = None
    with tempfile.TemporaryDirectory() as docs:
        Path(docs, "index.html").write_text("outside\n")
        Path(docs, "big.bin").write_bytes(b"x" * (2 << 20))
        try:
            ip("link", "add", host_if, "type", "veth", "peer", "name", world_if, "netns", ns)
            ip("addr", "add", f"{net}.1/24", "dev", host_if)
            ip("link", "set", host_if, "up")
            for cmd in (["addr", "add", f"{a}/24", "dev", world_if], ["addr", "add", f"{b}/24", "dev", world_if],
                        ["link", "set", world_if, "up"], ["link", "set", "lo", "up"],
                        ["route", "add", "default", "via", f"{net}.1"]):  # fmt: skip
                ip("-n", ns, *cmd)
            server = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", docs],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

            def up() -> bool:
                try:
                    return httpx.get(f"http://{a}/", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, timeout=20, what="the test world's HTTP server")
            yield a, b
        finally:
            if server is not None:
                server.kill()
                server.wait()
            ip("link", "del", host_if, check=False)
            ip("netns", "del", ns, check=False)


def status(s: Sandbox, address: str) -> str:
    # -m 4: a refused SYN is retried after 1 and 3 s, and each retry must be refused too.
    r = s.commands.run(f"curl -s -o /dev/null -w '%{{http_code}}' -m 4 http://{address}/ || true", timeout=20)
    return r.stdout.strip()


def test_deny_by_cidr_counts_and_names_what_it_refused(world: tuple[str, str], api: dict[str, str]) -> None:
    a, b = world
    with Sandbox.create(deny_out=[f"{a}/32"], **api) as s:
        assert status(s, b) == "200"
        assert status(s, a) == "000"
        info = s.get_network()
        assert info.internet and info.deny_out == [f"{a}/32"] and info.allow_out == []
        assert info.blocked >= 1
        assert {"address": a, "port": 80} in [{"address": d["address"], "port": d["port"]} for d in info.blocked_destinations]


def test_internet_off_with_an_allow_list(world: tuple[str, str], api: dict[str, str]) -> None:
    a, b = world
    with Sandbox.create(internet=False, allow_out=[b], **api) as s:
        assert status(s, b) == "200"
        assert status(s, a) == "000"
        assert s.get_network().blocked >= 1


def test_allow_wins_over_deny(world: tuple[str, str], api: dict[str, str]) -> None:
    a, b = world
    net = a.rsplit(".", 1)[0] + ".0/24"
    with Sandbox.create(deny_out=[net], allow_out=[b], **api) as s:
        assert status(s, b) == "200"
        assert status(s, a) == "000"


def test_live_updates_apply_at_once(world: tuple[str, str], api: dict[str, str]) -> None:
    a, b = world
    with Sandbox.create(**api) as s:
        assert status(s, a) == "200"
        assert s.update_network(deny_out=[a]).deny_out == [f"{a}/32"]
        assert status(s, a) == "000" and status(s, b) == "200"
        s.update_network(deny_out=[])
        assert status(s, a) == "200"
        off = s.update_network(internet=False)
        assert not off.internet and status(s, b) == "000"
        s.update_network(internet=True)
        assert status(s, b) == "200"
        assert s.get_info().internet


def test_bytes_in_and_out_are_counted(world: tuple[str, str], api: dict[str, str]) -> None:
    a, _ = world
    with Sandbox.create(**api) as s:
        before = s.get_network()
        s.commands.run(f"curl -s -m 10 -o /dev/null http://{a}/big.bin", timeout=30)
        after = s.get_network()
        assert after.bytes_in - before.bytes_in >= 2 << 20
        assert after.bytes_out > before.bytes_out


def test_bad_entries_are_refused(api: dict[str, str], corral_server: ServerProcess) -> None:
    with corral_server.client() as http:
        for entry in ("example.com", "*.github.com", "::1", "2001:db8::/32", "300.1.1.1", ""):
            r = http.post("/v1/sandboxes", json={"deny_out": [entry]})
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", (entry, r.text)
        with Sandbox.create(**api) as s:
            r = http.patch(f"/v1/sandboxes/{s.sandbox_id}/network", json={"allow_out": ["not-an-address"]})
            assert r.status_code == 400
            assert http.patch("/v1/sandboxes/nosuch/network", json={}).status_code == 404
        assert httpx.get(f"{corral_server.url}/v1/sandboxes/x/network").status_code == 401  # no key


def test_a_killed_sandbox_leaves_no_rules(world: tuple[str, str], api: dict[str, str]) -> None:
    a, _ = world
    s = Sandbox.create(deny_out=[a], **api)
    chain = f"p_{veth_name(s.sandbox_id)}"
    assert subprocess.run(["nft", "list", "chain", "inet", "corral", chain], capture_output=True).returncode == 0
    s.kill()
    s.close()

    def gone() -> bool:  # cleanup finishes after kill answers
        listed = subprocess.run(["nft", "list", "table", "inet", "corral"], capture_output=True, text=True).stdout
        return chain not in listed and veth_name(s.sandbox_id) not in listed

    wait_until(gone, timeout=30, what="the sandbox's rules to go")

"""Egress rules, live updates and traffic counters, against a test "outside world": a network
namespace this test makes, with an HTTP server on two addresses, reached through corral's rules."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from corral import Sandbox
from corral.backends.namespace.network import veth_name
from helpers import ServerProcess, wait_until
from world import outside_world

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, str]]:
    """Two addresses (a, b) of the test world, both serving HTTP on port 80 (see world.py)."""
    with outside_world() as w:
        yield w.a, w.b


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
        for entry in ("exa mple.com", "*github.com", "::1", "2001:db8::/32", "300.1.1.1", "", "a.*.com", "-x.com"):
            r = http.post("/v1/sandboxes", json={"deny_out": [entry]})
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", (entry, r.text)
        with Sandbox.create(**api) as s:
            r = http.patch(f"/v1/sandboxes/{s.sandbox_id}/network", json={"allow_out": ["not-an-address"]})
            assert r.status_code == 400
            assert http.patch("/v1/sandboxes/nosuch/network", json={}).status_code == 404
        assert httpx.get(f"{corral_server.url}/v1/sandboxes/x/network").status_code == 401  # no key


def test_a_killed_sandbox_leaves_no_rules(world: tuple[str, str], api: dict[str, str]) -> None:
    a, _ = world
    s = Sandbox.create(deny_out=[a, "c.test.corral"], **api)  # by address and by name
    chain = f"p_{veth_name(s.sandbox_id)}"
    assert subprocess.run(["nft", "list", "chain", "inet", "corral", chain], capture_output=True).returncode == 0
    s.kill()
    s.close()

    def gone() -> bool:  # cleanup finishes after kill answers
        listed = subprocess.run(["nft", "list", "table", "inet", "corral"], capture_output=True, text=True).stdout
        return chain not in listed and veth_name(s.sandbox_id) not in listed

    wait_until(gone, timeout=30, what="the sandbox's rules to go")


# ------------------------------------------------------------------------- rules by name
@pytest.fixture(scope="module")
def dns_server(world: tuple[str, str]) -> Iterator[ServerProcess]:
    """A corral server whose DNS filter asks the test world's zone."""
    server = ServerProcess(pool_size=0, extra_env={"CORRAL_DNS_UPSTREAM": f"{world[0]}:53"}).start()
    try:
        yield server
    finally:
        server.stop()
        server.remove_dirs()


def by_name(s: Sandbox, name: str) -> str:
    r = s.commands.run(f"curl -s -o /dev/null -w '%{{http_code}}' -m 4 http://{name}/ || true", timeout=20)
    return r.stdout.strip()


def test_a_denied_name_does_not_resolve(dns_server: ServerProcess) -> None:
    with Sandbox.create(deny_out=["a.test.corral"], api_key=dns_server.api_key, api_url=dns_server.url) as s:
        assert by_name(s, "b.test.corral") == "200"
        assert by_name(s, "a.test.corral") == "000"
        assert s.commands.run("getent hosts a.test.corral || echo refused").stdout.strip() == "refused"
        info = s.get_network()
        assert info.deny_out == ["a.test.corral"] and info.blocked >= 1
        assert "a.test.corral" in [d["address"] for d in info.blocked_destinations]


def test_allowed_names_open_their_addresses_with_internet_off(world: tuple[str, str], dns_server: ServerProcess) -> None:
    a, _ = world
    with Sandbox.create(internet=False, allow_out=["b.test.corral", "*.sub.test.corral"],
                        api_key=dns_server.api_key, api_url=dns_server.url) as s:  # fmt: skip
        assert by_name(s, "b.test.corral") == "200"
        assert by_name(s, "a.test.corral") == "000"  # not allowed: no answer, no route
        assert status(s, a) == "000"  # a by address: internet is off
        assert by_name(s, "x.sub.test.corral") == "200"  # a wildcard name, resolving to a: a opens
        assert status(s, a) == "200"


def test_rules_by_name_change_live(dns_server: ServerProcess) -> None:
    # (Only a sandbox with rules by name asks corral's resolver, hence the zone of the test world.)
    with Sandbox.create(deny_out=["c.test.corral"], api_key=dns_server.api_key, api_url=dns_server.url) as s:
        assert by_name(s, "a.test.corral") == "200"
        s.update_network(deny_out=["*.test.corral"])
        assert by_name(s, "a.test.corral") == "000" and by_name(s, "b.test.corral") == "000"
        s.update_network(deny_out=["c.test.corral"])
        assert by_name(s, "b.test.corral") == "200"

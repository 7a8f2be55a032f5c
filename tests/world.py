"""A test "outside world": a network namespace the tests make, with an HTTP server on two
addresses and a DNS zone, that sandboxes reach through corral's rules (no traffic leaves the host)."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers import wait_until

# The test world's DNS zone, served from its first address: a name to an address ("a"/"b").
ZONE = {"a.test.corral": "a", "b.test.corral": "b", "x.sub.test.corral": "a", "secret.test.corral": "a", "other.test.corral": "a"}
DNS_SERVER = r"""
import socket, struct, sys, json
zone = json.loads(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 53))
while True:
    q, addr = s.recvfrom(512)
    qid, flags = struct.unpack("!HH", q[:4])
    off, labels = 12, []
    while q[off]:
        labels.append(q[off + 1 : off + 1 + q[off]].decode()); off += 1 + q[off]
    qtype = struct.unpack("!H", q[off + 1 : off + 3])[0]
    end, name = off + 5, ".".join(labels).lower()
    rcode, answers = (0, []) if name in zone else (3, [])
    if name in zone and qtype == 1:
        answers = [b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(zone[name])]
    head = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
    s.sendto(head + q[12:end] + b"".join(answers), addr)
"""


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@dataclass(frozen=True)
class World:
    ns: str  # the namespace: run more servers in it with `ip netns exec`
    a: str
    b: str
    docs: Path  # what the HTTP server on port 80 serves


@contextlib.contextmanager
def outside_world() -> Iterator[World]:
    """Two addresses (a, b) in a namespace of our own, both serving HTTP on port 80, and a DNS
    server on a for the zone ZONE."""
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
            zone = {name: a if which == "a" else b for name, which in ZONE.items()}
            dns = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", DNS_SERVER, json.dumps(zone), a],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                yield World(ns, a, b, Path(docs))
            finally:
                dns.kill()
                dns.wait()
        finally:
            if server is not None:
                server.kill()
                server.wait()
            ip("link", "del", host_if, check=False)
            ip("netns", "del", ns, check=False)



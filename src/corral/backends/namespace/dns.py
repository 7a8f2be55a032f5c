"""The DNS resolver of sandboxes with egress rules by domain name.

Such a sandbox's DNS queries (UDP port 53, to any address) are redirected by nftables to this
resolver, in the server process, which knows the sandbox by its source address. A denied name,
or with internet off a name that is not allowed, gets NXDOMAIN and is counted; any other query
goes to the upstream resolver, and the addresses an allowed name resolves to are let through
the sandbox's firewall for their TTL (so an allowed name is reachable even with internet off).
Patterns: ``example.com`` is that name; ``*.example.com`` any name under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("corral.dns")

UPSTREAM_TIMEOUT = 3.0
MIN_TTL = 30  # seconds an allowed address stays open at least
MAX_JUMPS = 16  # name compression pointers followed, at most
TYPE_A = 1


@dataclass
class DomainRules:
    veth: str
    allow: list[str]
    deny: list[str]
    internet: bool
    blocked: Counter[str] = field(default_factory=Counter)


def matches(name: str, patterns: list[str]) -> bool:
    name = name.rstrip(".").lower()
    for p in patterns:
        if p.startswith("*."):
            if name.endswith(p[1:]):
                return True
        elif name == p:
            return True
    return False


# ---- wire format ---------------------------------------------------------------------------


def _name(data: bytes, off: int) -> tuple[str, int]:
    """A (possibly compressed) name at ``off``: the name and the offset after it."""
    labels: list[str] = []
    end = None
    for _ in range(MAX_JUMPS * 8):
        n = data[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            continue
        off += 1
        if n == 0:
            return ".".join(labels), end if end is not None else off
        labels.append(data[off : off + n].decode("ascii", "replace"))
        off += n
    raise ValueError("name too long or looping")


def question(data: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, offset after the question) of a standard query, or None."""
    try:
        _, flags, qdcount = struct.unpack("!HHH", data[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        name, off = _name(data, 12)
        qtype = struct.unpack("!H", data[off : off + 2])[0]
        return name.lower(), qtype, off + 4
    except (struct.error, IndexError, ValueError):
        return None


def a_records(reply: bytes) -> list[tuple[str, int]]:
    """(address, ttl) of the A records in a reply's answer section."""
    out: list[tuple[str, int]] = []
    try:
        qd, an = struct.unpack("!HH", reply[4:8])
        off = 12
        for _ in range(qd):
            _, off = _name(reply, off)
            off += 4
        for _ in range(an):
            _, off = _name(reply, off)
            rtype, _, ttl, length = struct.unpack("!HHIH", reply[off : off + 10])
            off += 10
            if rtype == TYPE_A and length == 4:
                out.append((socket.inet_ntoa(reply[off : off + 4]), ttl))
            off += length
    except (struct.error, IndexError, ValueError):
        pass
    return out


def nxdomain(query: bytes, question_end: int) -> bytes:
    """The NXDOMAIN answer to a query (its question echoed)."""
    qid, flags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3  # QR, opcode and RD kept, RA, rcode 3
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + query[12:question_end]


# ---- the resolver --------------------------------------------------------------------------

# (the sandbox's address, its veth, the (address, ttl) an allowed name resolved to)
AllowAddresses = Callable[[str, str, list[tuple[str, int]]], Awaitable[None]]


class Resolver(asyncio.DatagramProtocol):
    def __init__(self, upstream: tuple[str, int], allow_addresses: AllowAddresses) -> None:
        self.upstream = upstream
        self.allow_addresses = allow_addresses
        self.rules: dict[str, DomainRules] = {}  # sandbox address -> its rules
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: Any) -> None:
        rules = self.rules.get(addr[0])
        q = question(data)
        if rules is None or q is None or self.transport is None:
            return  # not a sandbox of ours, or not a query: no answer
        name, qtype, end = q
        allowed = matches(name, rules.allow)
        if (matches(name, rules.deny) and not allowed) or (not rules.internet and not allowed):
            rules.blocked[name] += 1
            self.transport.sendto(nxdomain(data, end), addr)
            return
        try:
            reply = await self._upstream(data)
        except (OSError, TimeoutError) as e:
            log.info("DNS upstream %s:%s failed for %s: %s", *self.upstream, name, e)
            return
        if allowed and qtype == TYPE_A:
            addresses = a_records(reply)
            if addresses:
                with contextlib.suppress(Exception):
                    await self.allow_addresses(addr[0], rules.veth, addresses)
        self.transport.sendto(reply, addr)

    async def _upstream(self, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            await loop.sock_connect(s, self.upstream)
            await loop.sock_sendall(s, data)
            return await asyncio.wait_for(loop.sock_recv(s, 4096), UPSTREAM_TIMEOUT)


async def start(upstream: tuple[str, int], allow_addresses: AllowAddresses) -> tuple[Resolver, int]:
    """The resolver on a free UDP port of every host address; returns it and its port."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Resolver(upstream, allow_addresses), local_addr=("0.0.0.0", 0)
    )
    return protocol, int(transport.get_extra_info("sockname")[1])

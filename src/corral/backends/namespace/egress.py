"""The egress proxy of sandboxes with secrets: placeholders inside, real values on the wire.

A sandbox given secrets sees each as an environment variable holding a placeholder. Its
outgoing TCP connections to ports 80 and 443 are redirected by nftables to this proxy (in the
server process), which finds the original destination (``SO_ORIGINAL_DST``), applies the
sandbox's egress rules to it, and forwards the connection. HTTPS is terminated with a
certificate for the requested name signed by corral's own CA (which the sandbox trusts: it is
in the CA bundle bound into every sandbox) and re-encrypted toward the real server, verified
with the host's CA bundle. In each request's headers (never its URL or body) the proxy puts a
secret's real value in place of its placeholder only when the request goes to one of the
secret's allowed hosts (the TLS server name, which must match the Host header). Requests are
forwarded one per connection (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..base import SecretRule
from .dns import matches

log = logging.getLogger("corral.egress")

SO_ORIGINAL_DST = 80
MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 10.0
PIPE_CHUNK = 64 * 1024
HOP_HEADERS = (b"connection", b"proxy-connection", b"keep-alive")
HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
MAX_CACHED = 512


@dataclass
class SandboxEgress:
    secrets: list[SecretRule]
    internet: bool = True
    allow: list[str] = field(default_factory=list)  # IPv4 CIDRs
    deny: list[str] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)  # addresses allowed names resolved to
    blocked: Counter[tuple[str, int]] = field(default_factory=Counter)  # refused by the proxy

    def permits(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if address in self.resolved or any(ip in ipaddress.ip_network(c) for c in self.allow):
            return True
        if any(ip in ipaddress.ip_network(c) for c in self.deny):
            return False
        return self.internet


# ---- corral's CA ---------------------------------------------------------------------------


class CertificateAuthority:
    """corral's CA (created once in the data dir, key 0600), and leaf certificates made from it."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._ser, self._oid = x509, hashes, ec, serialization, NameOID
        self.cert_path, key_path = directory / "egress-ca.crt", directory / "egress-ca.key"
        if not (self.cert_path.exists() and key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral egress proxy CA")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256())
            )  # fmt: skip
            directory.mkdir(parents=True, exist_ok=True)
            # SECURITY: the key is the proxy's alone: 0600 from the start.
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
            self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self.key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        self.dir = directory
        self._contexts: dict[str, ssl.SSLContext] = {}

    def pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server TLS context presenting a certificate for ``host`` (cached)."""
        ctx = self._contexts.get(host)
        if ctx is not None:
            return ctx
        if not HOSTNAME.fullmatch(host):
            host = "invalid.invalid"  # a client's odd server name gets a certificate it will refuse
        if len(self._contexts) >= MAX_CACHED:
            self._contexts.clear()  # SECURITY: names come from sandboxes: the cache stays bounded
        x509, ec, ser = self._x509, self._ec, self._ser
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(self.key, self._hashes.SHA256())
        )  # fmt: skip
        leaf = self.dir / "leaf.pem"
        # load_cert_chain reads files: write, load, remove (0600: it holds a key).
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert.public_bytes(ser.Encoding.PEM))
            f.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(leaf)
        leaf.unlink()
        ctx.set_alpn_protocols(["http/1.1"])
        self._contexts[host] = ctx
        return ctx

# ---- the proxy -----------------------------------------------------------------------------


def original_destination(sock: socket.socket) -> tuple[str, int]:
    data = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, raw = struct.unpack("!2xH4s8x", data)
    return socket.inet_ntoa(raw), port


def rewrite_head(head: bytes, host: str, secrets: list[SecretRule]) -> bytes:
    """The request head with ``Connection: close`` and, in header values only, each secret whose
    allowed hosts include ``host`` in place of its placeholder."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    out = [lines[0]]
    usable = [s for s in secrets if matches(host, list(s.hosts))]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in HOP_HEADERS:
            continue
        for s in usable:
            line = line.replace(s.placeholder.encode(), s.value.encode())
        out.append(line)
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


def header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


class EgressProxy:
    def __init__(self, ca: CertificateAuthority, verify_bundle: str | None, refuse: list[str]) -> None:
        self.ca = ca
        self.sandboxes: dict[str, SandboxEgress] = {}  # sandbox address -> its secrets and rules
        self.refuse = [ipaddress.ip_network(n) for n in refuse]  # never, whatever the rules say
        self.client_tls = ssl.create_default_context(cafile=verify_bundle) if verify_bundle else ssl.create_default_context()
        self.server: asyncio.Server | None = None
        self._default_tls: ssl.SSLContext | None = None
        self._names: dict[int, str] = {}  # id(SSLObject) -> the server name it asked for

    def _server_tls(self) -> ssl.SSLContext:
        """One server context for every connection: a default certificate, replaced in the
        handshake by one for the name the client asked for (which is remembered for the request)."""
        if self._default_tls is None:
            ctx = self.ca.context_for("corral-egress.invalid")

            def pick(obj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
                if name:
                    if len(self._names) >= MAX_CACHED:
                        self._names.clear()  # handshakes that never finished
                    self._names[id(obj)] = name.lower()
                    obj.context = self.ca.context_for(name.lower())

            ctx.sni_callback = pick
            self._default_tls = ctx
        return self._default_tls

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "0.0.0.0", 0, limit=MAX_HEAD)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            log.debug("egress connection ended: %s: %s", type(e).__name__, e)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        rules = self.sandboxes.get(peer)
        if rules is None:
            return
        address, port = original_destination(writer.get_extra_info("socket"))
        ip = ipaddress.ip_address(address)
        if any(ip in n for n in self.refuse) or not rules.permits(address):
            log.info("egress refused: %s -> %s:%s", peer, address, port)
            rules.blocked[(address, port)] += 1
            return
        server_name = None
        if port == 443:
            await writer.start_tls(self._server_tls())
            server_name = self._names.pop(id(writer.get_extra_info("ssl_object")), None)
            if not server_name:
                return  # no server name: nothing to present a certificate for
        head = await reader.readuntil(b"\r\n\r\n")
        host = (header(head, b"host") or "").rsplit(":", 1)[0].lower()
        if server_name is not None and host != server_name.lower():
            host = ""  # SECURITY: a Host that is not the TLS name gets no secret (no domain fronting)
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(
            address, port, ssl=self.client_tls if server_name else None, server_hostname=server_name,
        ), CONNECT_TIMEOUT)  # fmt: skip
        try:
            up_writer.write(rewrite_head(head, host, rules.secrets))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(PIPE_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()

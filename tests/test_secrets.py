"""Secrets: the sandbox sees a placeholder; corral's egress proxy puts the value in request headers
to the allowed host only. Against an HTTPS and HTTP server of the test world (see world.py)."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral import InvalidRequestError, Sandbox, SecretNotFoundError, Secrets
from helpers import ServerProcess, wait_until
from world import World, outside_world

pytestmark = pytest.mark.privileged

VALUE = "s3cr3t-value-that-must-stay-outside"
# Answers /check with "authorized" when the Authorization header is exactly "Bearer <VALUE>",
# "denied" otherwise; it never echoes what it got.
SERVER = r"""
import http.server, ssl, sys, threading
expected = "Bearer " + sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (b"authorized" if self.headers.get("Authorization") == expected else b"denied") + b"\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
address, cert, key = sys.argv[2], sys.argv[3], sys.argv[4]
tls = http.server.ThreadingHTTPServer((address, 443), H)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer((address, 8080), H).serve_forever()
"""


def make_ca_and_cert(d: Path, names: list[str]) -> Path:
    """A test CA (returned: its PEM) and a certificate for ``names`` signed by it (cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test world CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))  # fmt: skip
    ca_pem = d / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_pem


@pytest.fixture(scope="module")
def secret_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServerProcess]]:
    """The test world with an HTTPS (443) and HTTP (8080) checker on a, and a corral server that
    trusts the world's CA (as a host behind its own CA would) and registers the secret."""
    d = tmp_path_factory.mktemp("secrets")
    ca_pem = make_ca_and_cert(d, ["secret.test.corral", "other.test.corral"])
    bundle = d / "bundle.pem"
    bundle.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + ca_pem.read_bytes())
    with outside_world() as w:
        checker = subprocess.Popen(
            ["ip", "netns", "exec", w.ns, sys.executable, "-c", SERVER, VALUE, w.a, str(d / "cert.pem"), str(d / "key.pem")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        def listening() -> bool:
            if checker.poll() is not None:
                raise AssertionError(f"the checker exited with {checker.returncode}")
            with socket.socket() as probe:
                probe.settimeout(1)
                return probe.connect_ex((w.a, 443)) == 0

        wait_until(listening, timeout=20, what="the test world's checker")
        server = ServerProcess(pool_size=0, extra_env={"CORRAL_CA_BUNDLE": str(bundle)}).start()
        try:
            Secrets.create("API_TOKEN", VALUE, ["secret.test.corral"], api_key=server.api_key, api_url=server.url)
            yield w, server
        finally:
            server.stop()
            server.remove_dirs()
            checker.kill()
            checker.wait()


def curl(s: Sandbox, url: str, a: str, port: int) -> str:
    host = url.split("/")[2]
    cmd = f'curl -s -m 8 --resolve {host}:{port}:{a} -H "Authorization: Bearer $API_TOKEN" {url} || echo failed'
    return s.commands.run(cmd, timeout=30).stdout.strip()


def test_the_value_goes_to_the_allowed_host_only(secret_world: tuple[World, ServerProcess]) -> None:
    w, server = secret_world
    with Sandbox.create(secrets=["API_TOKEN"], api_key=server.api_key, api_url=server.url) as s:
        assert curl(s, "https://secret.test.corral/check", w.a, 443) == "authorized"
        assert curl(s, "https://other.test.corral/check", w.a, 443) == "denied"  # got the placeholder


def test_the_value_is_never_inside(secret_world: tuple[World, ServerProcess]) -> None:
    _, server = secret_world
    with Sandbox.create(secrets=["API_TOKEN"], api_key=server.api_key, api_url=server.url) as s:
        placeholder = s.commands.run("printenv API_TOKEN").stdout.strip()
        assert placeholder.startswith("corral-secret-api_token-") and VALUE not in placeholder
        found = s.commands.run(f"grep -rl '{VALUE}' /proc/*/environ /etc /home /tmp /run 2>/dev/null; true", user="root")
        assert found.stdout.strip() == ""
        listed = Secrets.list(api_key=server.api_key, api_url=server.url)
        assert [x.name for x in listed] == ["API_TOKEN"] and VALUE not in repr(listed)


def test_plain_http_and_egress_rules_still_apply(secret_world: tuple[World, ServerProcess]) -> None:
    w, server = secret_world
    with Sandbox.create(secrets=["API_TOKEN"], deny_out=[w.a], api_key=server.api_key, api_url=server.url) as s:
        # Port 80 goes through the proxy too (the checker's plain port is 8080: not proxied, so not
        # substituted); a denied destination stays denied through the proxy.
        assert curl(s, "http://secret.test.corral:8080/check", w.a, 8080) == "failed"
        assert curl(s, "https://secret.test.corral/check", w.a, 443) == "failed"
        assert {"address": w.a, "port": 443} in [{k: d[k] for k in ("address", "port")} for d in s.get_network().blocked_destinations]


def test_bad_secret_requests(corral_server: ServerProcess) -> None:
    api = {"api_key": corral_server.api_key, "api_url": corral_server.url}
    for name, value, hosts in (("1BAD", "v", ["x.com"]), ("OK", "line\nbreak", ["x.com"]), ("OK", "v", ["not a host"]),
                               ("OK", "v", [])):  # fmt: skip
        with pytest.raises(InvalidRequestError):
            Secrets.create(name, value, hosts, **api)
    with pytest.raises(SecretNotFoundError):
        Sandbox.create(secrets=["NOPE"], **api)
    with pytest.raises(SecretNotFoundError):
        Secrets.delete("NOPE", **api)
    with corral_server.client() as http:
        assert http.get("/v1/secrets", headers={"X-API-Key": "wrong"}).status_code == 401


def test_a_killed_sandbox_with_secrets_leaves_no_rules(secret_world: tuple[World, ServerProcess]) -> None:
    from corral.backends.namespace.network import veth_name

    _, server = secret_world
    s = Sandbox.create(secrets=["API_TOKEN"], api_key=server.api_key, api_url=server.url)
    veth = veth_name(s.sandbox_id)
    s.kill()
    s.close()

    def gone() -> bool:
        listed = subprocess.run(["nft", "list", "table", "inet", "corral"], capture_output=True, text=True).stdout
        return veth not in listed

    wait_until(gone, timeout=30, what="the sandbox's egress rules to go")

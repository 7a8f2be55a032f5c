"""Fixtures of the E2B compatibility tests: the official e2b SDKs pointed at the session's
corral server by their own environment variables, nothing else."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess

# Never an E2B-owned domain: if anything fell back to the domain, it would fail to resolve.
E2B_DOMAIN = "corral.invalid"


def e2b_environ(server: ServerProcess) -> dict[str, str]:
    return {"E2B_API_KEY": server.api_key, "E2B_API_URL": server.url, "E2B_SANDBOX_URL": server.url,
            "E2B_DOMAIN": E2B_DOMAIN}


@pytest.fixture()
def e2b_vars(corral_server: ServerProcess) -> dict[str, str]:
    """The E2B_* variables for an SDK in a child process."""
    return e2b_environ(corral_server)


@pytest.fixture()
def e2b_env(corral_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    for name, value in e2b_environ(corral_server).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return corral_server


@pytest.fixture()
def e2b_sbx(e2b_env: ServerProcess) -> Iterator[object]:
    from e2b import Sandbox

    sandbox = Sandbox.create(metadata={"suite": "e2b-compat"})
    try:
        yield sandbox
    finally:
        sandbox.kill()


@pytest.fixture(scope="package", autouse=True)
def no_compat_tracebacks(corral_server: ServerProcess) -> Iterator[None]:
    """Every failure in the compat layer must be a clean error answer, never an unexpected
    exception: after these tests, the server log has no traceback through compat/e2b."""
    start = corral_server.log_path.stat().st_size if corral_server.log_path.exists() else 0
    yield
    with open(corral_server.log_path, "rb") as f:
        f.seek(start)
        log = f.read().decode(errors="replace")
    assert "compat/e2b" not in log, f"unexpected errors in the E2B compat layer:\n{log[-6000:]}"


@pytest.fixture(scope="package")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A corral server with a certificate for *.corral.test (its own, made here) and that domain."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=corral.test",
         "-addext", "subjectAltName=DNS:*.corral.test,DNS:corral.test,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )
    server = ServerProcess(pool_size=0, extra_env={
        "CORRAL_TLS_CERT_FILE": str(d / "cert.pem"), "CORRAL_TLS_KEY_FILE": str(d / "key.pem"),
        "CORRAL_E2B_DOMAIN": "corral.test", "CORRAL_DOMAIN": "corral.test"})
    server.url = server.url.replace("http://", "https://")
    server._healthy = lambda: _healthy_tls(server, d / "cert.pem")  # type: ignore[method-assign]
    server.start()
    try:
        yield server, d / "cert.pem"
    finally:
        server.stop()
        server.remove_dirs()


def _healthy_tls(server: ServerProcess, cert: Path) -> bool:
    assert server.proc is not None
    if server.proc.poll() is not None:
        raise AssertionError(f"server exited:\n{server.log_tail()}")
    try:
        return httpx.get(server.url + "/health", verify=ssl.create_default_context(cafile=cert), timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

"""Older releases of the `e2b` and `e2b-code-interpreter` Python SDKs (their own venv, made by
`make e2b-sdks`) drive corral."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, ServerProcess

pytestmark = pytest.mark.privileged

OLD_PYTHON = REPO / ".venv-e2b-old" / "bin" / "python"


@pytest.mark.skipif(not OLD_PYTHON.exists(), reason="run `make e2b-sdks` for the older e2b SDK's venv")
def test_older_python_sdk(e2b_vars: dict[str, str]) -> None:
    env = {**os.environ, **e2b_vars}
    env.pop("E2B_DEBUG", None)
    script = Path(__file__).with_name("old_sdk_flow.py")
    p = subprocess.run([str(OLD_PYTHON), str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-4000:]}"
    assert p.stdout.splitlines()[-1] == "ok kill"


@pytest.mark.skipif(not OLD_PYTHON.exists(), reason="run `make e2b-sdks` for the older e2b SDK's venv")
def test_older_code_interpreter_sdk(tls_server: tuple[ServerProcess, Path]) -> None:
    """e2b-code-interpreter 2.0.0 reaches the interpreter only by host name (49999-<id>.<domain>):
    the same TLS server and test-only resolver as below."""
    server, cert = tls_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(
        E2B_API_KEY=server.api_key, E2B_DOMAIN="corral.test", SSL_CERT_FILE=str(cert),
        CORRAL_TEST_RESOLVE=f"corral.test=127.0.0.1:{server.port}",
        PYTHONPATH=str(Path(__file__).with_name("resolve")),
    )
    script = Path(__file__).with_name("old_ci_flow.py")
    p = subprocess.run([str(OLD_PYTHON), str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-4000:]}\n{server.log_tail()}"
    assert p.stdout.splitlines()[-6:] == ["ok state", "ok dataframe", "ok chart", "ok context", "ok error", "ok kill"]


@pytest.mark.skipif(not OLD_PYTHON.exists(), reason="run `make e2b-sdks` for the older e2b SDK's venv")
def test_older_python_sdk_by_host_names_over_tls(tls_server: tuple[ServerProcess, Path]) -> None:
    """Only E2B_DOMAIN: the SDK reaches https://api.corral.test and https://49983-<id>.corral.test,
    which a test-only resolver (tests/compat/resolve) sends to the TLS server, as wildcard DNS would;
    ``get_host(8000)`` is a port URL of corral's (CORRAL_DOMAIN is the same domain)."""
    server, cert = tls_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(
        E2B_API_KEY=server.api_key, E2B_DOMAIN="corral.test", SSL_CERT_FILE=str(cert),
        CORRAL_TEST_RESOLVE=f"corral.test=127.0.0.1:{server.port}",
        PYTHONPATH=str(Path(__file__).with_name("resolve")), CORRAL_TEST_GET_HOST="1",
    )
    script = Path(__file__).with_name("old_sdk_flow.py")
    p = subprocess.run([str(OLD_PYTHON), str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-4000:]}\n{server.log_tail()}"
    assert p.stdout.splitlines()[-1] == "ok kill"

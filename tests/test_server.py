"""The HTTP layer: authentication, `{code, message}` errors for bad input, service endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def test_health_is_open_and_everything_else_needs_the_key(corral_server: ServerProcess) -> None:
    assert httpx.get(corral_server.url + "/health").json()["status"] == "ok"
    for method, path in [("GET", "/v1/sandboxes"), ("POST", "/v1/sandboxes"), ("GET", "/metrics"),
                         ("DELETE", "/v1/sandboxes/abc"), ("GET", "/v1/sandboxes/abc/files?path=/etc/passwd"),
                         ("POST", "/v1/sandboxes/abc/commands")]:
        r = httpx.request(method, corral_server.url + path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["code"] == "unauthorized"
        r = httpx.request(method, corral_server.url + path, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = httpx.get(corral_server.url + "/v1/sandboxes", headers={"Authorization": f"Bearer {corral_server.api_key}"})
    assert r.status_code == 200


def test_bad_input_gets_clear_4xx(corral_server: ServerProcess) -> None:
    with corral_server.client() as c:
        cases = [
            (c.post("/v1/sandboxes", content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"template": "no-such-template"}), 404, "template_not_found"),
            (c.post("/v1/sandboxes", json={"template": "../../etc"}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"timeout": -5}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"timeout": 10**9}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"memory_mb": 10**9}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"envs": {"1BAD": "x"}}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"metadata": {"k": "v" * 5000}}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", json={"unknown_field": 1}), 400, "invalid_request"),
            (c.post("/v1/sandboxes", content=b"x" * (21 * 1024 * 1024), headers={"content-type": "application/json"}), 413, "payload_too_large"),
            (c.get("/v1/sandboxes/doesnotexist"), 404, "sandbox_not_found"),
            (c.delete("/v1/sandboxes/doesnotexist"), 404, "sandbox_not_found"),
            (c.post("/v1/sandboxes/doesnotexist/commands", json={"cmd": "true"}), 404, "sandbox_not_found"),
            (c.get("/v1/sandboxes?state=bogus"), 400, "invalid_request"),
            (c.get("/v1/no/such/route"), 404, "not_found"),
        ]
        for r, status, code in cases:
            assert r.status_code == status, (r.request.url, r.text)
            body = r.json()
            assert body["code"] == code and body["message"], body
        assert c.get("/health").status_code == 200  # still serving


def test_bad_input_on_a_running_sandbox(corral_server: ServerProcess) -> None:
    with corral_server.client() as c:
        sid = c.post("/v1/sandboxes", json={}).json()["sandbox_id"]
        try:
            cases = [
                (c.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": ""}), 400, "invalid_request"),
                (c.post(f"/v1/sandboxes/{sid}/commands", content=b"{nope"), 400, "invalid_request"),
                (c.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true", "bogus": 1}), 400, "invalid_request"),
                (c.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true", "timeout": -1}), 400, "invalid_request"),
                (c.post(f"/v1/sandboxes/{sid}/commands", content=b"x" * (21 * 1024 * 1024)), 413, "payload_too_large"),
                (c.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true", "user": "bad user"}), 400, "invalid_request"),
                (c.post(f"/v1/sandboxes/{sid}/commands/999999/stdin", json={"data": "x"}), 404, "process_not_found"),
                (c.post(f"/v1/sandboxes/{sid}/commands/999999/signal", json={"signal": "SIGNOPE"}), 400, "invalid_request"),
                (c.get(f"/v1/sandboxes/{sid}/commands/999999/stream"), 404, "process_not_found"),
                (c.get(f"/v1/sandboxes/{sid}/files", params={"path": "/no/such/file"}), 404, "file_not_found"),
                (c.get(f"/v1/sandboxes/{sid}/files", params={"path": "/home/user"}), 400, "is_a_directory"),
                (c.get(f"/v1/sandboxes/{sid}/fs/list", params={"path": "/etc/passwd"}), 400, "not_a_directory"),
                (c.get(f"/v1/sandboxes/{sid}/fs/list", params={"path": "/", "depth": 0}), 400, "invalid_request"),
                (c.put(f"/v1/sandboxes/{sid}/files", params={"path": "/etc/evil"}, content=b"x"), 403, "permission_denied"),
                (c.get(f"/v1/sandboxes/{sid}/fs/stat", params={"path": "a\0b"}), 400, "invalid_request"),
                (c.post(f"/v1/sandboxes/{sid}/timeout", json={"timeout": 0}), 400, "invalid_request"),
            ]
            for r, status, code in cases:
                assert r.status_code == status, (r.request.url, r.text)
                assert r.json()["code"] == code, r.text
        finally:
            assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
        r = c.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true"})
        assert r.status_code == 409 and r.json()["code"] == "sandbox_not_running"
        r = c.delete(f"/v1/sandboxes/{sid}")
        assert r.status_code == 409 and r.json()["code"] == "sandbox_not_running"


def test_commands_stream_as_ndjson_and_sse(corral_server: ServerProcess) -> None:
    with corral_server.client() as c:
        sid = c.post("/v1/sandboxes", json={}).json()["sandbox_id"]
        try:
            with c.stream("POST", f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo out; echo err >&2; exit 3"}) as r:
                assert r.headers["content-type"].startswith("application/x-ndjson")
                events = [json.loads(line) for line in r.iter_lines() if line]
            assert events[0]["type"] == "start" and events[0]["pid"] > 0
            assert {"type": "stdout", "data": "out\n"} in events and {"type": "stderr", "data": "err\n"} in events
            assert events[-1] == {"type": "end", "exit_code": 3, "error": None}
            with c.stream("POST", f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo hi"},
                          headers={"accept": "text/event-stream"}) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                text = r.read().decode()
            assert "event: start" in text and '"data": "hi\\n"' in text and "event: end" in text
        finally:
            c.delete(f"/v1/sandboxes/{sid}")


def test_metrics_and_openapi(corral_server: ServerProcess) -> None:
    with corral_server.client() as c:
        text = c.get("/metrics").text
        assert "corral_sandboxes_created_total" in text and "corral_sandboxes_running" in text
    served = httpx.get(corral_server.url + "/openapi.json").json()
    committed = json.loads((REPO / "spec" / "openapi.json").read_text())
    assert served["paths"].keys() == committed["paths"].keys()
    assert "/v1/sandboxes/{sandbox_id}/commands" in served["paths"]


@pytest.mark.parametrize("env_key", [True, False])
def test_api_key_generated_once_and_private(env_key: bool, tmp_path: Path) -> None:
    from corral.server.auth import load_or_create_key

    if env_key:
        assert load_or_create_key(tmp_path, "from-env") == ("from-env", False)
        assert not (tmp_path / "api_key").exists()
        return
    key, created = load_or_create_key(tmp_path, None)
    assert created and len(key) > 30
    assert (tmp_path / "api_key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path, None) == (key, False)

"""The E2B wire protocol on corral's listener, byte for byte where the SDKs are strict: routing
by headers and by host name (also over TLS), the Connect framing, and a clean refusal of every
request without a valid API key or access token, in the error shapes the SDKs parse."""

from __future__ import annotations

import json
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess, wait_until

pytestmark = pytest.mark.privileged


def envelope(message: dict, flags: int = 0) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


def parse_envelopes(body: bytes) -> list[tuple[int, dict]]:
    out, i = [], 0
    while i < len(body):
        flags, length = struct.unpack(">BI", body[i : i + 5])
        out.append((flags, json.loads(body[i + 5 : i + 5 + length])))
        i += 5 + length
    return out


@pytest.fixture()
def e2b_api(corral_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=corral_server.url, headers={"X-API-Key": corral_server.api_key}, timeout=60) as c:
        yield c


@pytest.fixture()
def created(e2b_api: httpx.Client) -> Iterator[dict]:
    r = e2b_api.post("/v2/sandboxes", json={"templateID": "base", "metadata": {}, "envVars": {"FROM_CREATE": "yes"}})
    assert r.status_code == 201, r.text
    body = r.json()
    try:
        yield body
    finally:
        e2b_api.delete(f"/sandboxes/{body['sandboxID']}")


def envd_headers(sandbox: dict, port: int = 49983, token: str | None = None) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox["sandboxID"], "E2b-Sandbox-Port": str(port),
            "X-Access-Token": sandbox["envdAccessToken"] if token is None else token}


def test_create_response_fields(created: dict) -> None:
    assert set(created) >= {"templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken", "domain"}
    assert created["templateID"] == "base" and created["domain"] is None
    assert created["sandboxID"].isalnum() and created["sandboxID"].islower()
    assert created["trafficAccessToken"] is None


def test_v1_create_and_corral_api_side_by_side(e2b_api: httpx.Client) -> None:
    r = e2b_api.post("/sandboxes", json={"templateID": "base", "timeout": 60, "secure": True, "metadata": {}})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    assert e2b_api.get(f"/v1/sandboxes/{sid}").json()["state"] == "running"  # corral's own API, same sandbox
    assert e2b_api.get("/sandboxes").status_code == 200
    assert e2b_api.post(f"/sandboxes/{sid}/resume").status_code == 409
    assert e2b_api.delete(f"/sandboxes/{sid}").status_code == 204
    gone = e2b_api.delete(f"/sandboxes/{sid}")
    assert gone.status_code == 404 and gone.json() == {"code": 404, "message": f"sandbox {sid!r} is not running"}


def test_start_stream_framing(corral_server: ServerProcess, created: dict) -> None:
    r = httpx.post(
        corral_server.url + "/process.Process/Start",
        content=envelope({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo $FROM_CREATE"]}, "stdin": False}),
        headers={**envd_headers(created), "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/connect+json"
    frames = parse_envelopes(r.content)
    assert frames[0] == (0, {"event": {"start": {"pid": frames[0][1]["event"]["start"]["pid"]}}})
    assert (0, {"event": {"data": {"stdout": "eWVzCg=="}}}) in frames  # "yes\n"
    assert frames[-2] == (0, {"event": {"end": {"exited": True, "status": "exit status 0"}}})
    assert frames[-1] == (2, {})
    bad = httpx.post(corral_server.url + "/process.Process/Start", content=envelope({"process": {}}),
                     headers={**envd_headers(created), "Content-Type": "application/connect+json"})
    assert parse_envelopes(bad.content)[-1] == (2, {"error": {"code": "invalid_argument",
                                                               "message": "process.cmd must be a non-empty string"}})


def test_unary_errors(corral_server: ServerProcess, created: dict) -> None:
    url = corral_server.url + "/filesystem.Filesystem/"
    h = {**envd_headers(created), "Content-Type": "application/json"}
    assert httpx.post(url + "Stat", content=b"{not json", headers=h).json()["code"] == "invalid_argument"
    r = httpx.post(url + "Stat", json={"path": "/nope"}, headers=h)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.post(url + "ListDir", json={"path": "/etc/hostname"}, headers=h)
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = httpx.post(url + "Nope", json={}, headers=h)
    assert r.status_code == 404
    r = httpx.post(url + "Stat", json={"path": "/"}, headers={**h, "Authorization": "Basic bm8gc3VjaDo="})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


def test_access_token_required(corral_server: ServerProcess, e2b_api: httpx.Client, created: dict) -> None:
    other = e2b_api.post("/v2/sandboxes", json={"templateID": "base"}).json()
    try:
        url = corral_server.url
        for token in ("", "wrong", other["envdAccessToken"]):
            h = envd_headers(created, token=token)
            r = httpx.post(url + "/filesystem.Filesystem/Stat", json={"path": "/"}, headers=h)
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
            r = httpx.get(url + "/files", params={"path": "/etc/hostname"}, headers=h)
            assert r.status_code == 401 and r.json()["code"] == 401
            r = httpx.post(url + "/files", params={"path": "/tmp/x"}, content=b"x", headers=h)
            assert r.status_code == 401
        r = httpx.post(url + "/filesystem.Filesystem/Stat", json={"path": "/"}, headers=envd_headers(created))
        assert r.status_code == 200 and r.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
        health = httpx.get(url + "/health", headers=envd_headers(created, token=""))
        assert health.status_code == 204  # as envd: health needs no token
    finally:
        e2b_api.delete(f"/sandboxes/{other['sandboxID']}")


def test_api_key_required(corral_server: ServerProcess) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        for method, path in (("POST", "/v2/sandboxes"), ("GET", "/v2/sandboxes"), ("GET", "/templates"),
                             ("DELETE", "/sandboxes/abc")):
            r = httpx.request(method, corral_server.url + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers)
            assert set(r.json()) == {"code", "message"} and r.json()["code"] == 401


def test_bad_control_plane_input(e2b_api: httpx.Client, created: dict) -> None:
    sid = created["sandboxID"]
    cases = [
        ("POST", "/v2/sandboxes", {"templateID": 5}, 400),
        ("POST", "/v2/sandboxes", {"templateID": "base", "timeout": 10**9}, 400),
        ("POST", "/v2/sandboxes", {"templateID": "base", "envVars": {"1BAD": "x"}}, 400),
        ("POST", "/v2/sandboxes", {"templateID": "base", "network": {"rules": {"a.com": []}}}, 501),
        ("POST", "/v2/sandboxes", {"templateID": "base", "network": {"denyOut": ["not a host!"]}}, 400),
        ("PUT", f"/sandboxes/{sid}/network", {"egressProxy": {"address": "p:1"}}, 501),
        ("PUT", f"/sandboxes/{sid}/network", {"allowOut": "10.0.0.1"}, 400),
        ("PUT", "/sandboxes/nope/network", {}, 404),
        ("POST", "/v2/sandboxes", {"templateID": "base", "network": "open"}, 400),
        ("POST", "/v2/sandboxes", {"templateID": "base", "autoPause": True}, 501),
        ("POST", "/v2/sandboxes", {"templateID": "nope"}, 404),
        ("POST", f"/sandboxes/{sid}/timeout", {"timeout": "soon"}, 400),
        ("POST", f"/sandboxes/{sid}/fork", {}, 501),
        ("POST", f"/sandboxes/{sid}/pause", {}, 501),
        ("GET", "/v2/sandboxes?limit=0", None, 400),
        ("GET", "/v2/sandboxes?nextToken=%%%", None, 400),
        ("GET", "/v2/sandboxes?state=sleeping", None, 400),
        ("GET", "/sandboxes/nope/metrics", None, 404),
        ("POST", "/v3/templates", {}, 501),
        ("GET", "/sandboxes/x/y/z", None, 404),
    ]
    for method, path, body, status in cases:
        r = e2b_api.request(method, path, json=body) if body is not None else e2b_api.request(method, path)
        assert r.status_code == status, (method, path, r.text)
        assert isinstance(r.json()["code"], int) and r.json()["message"], (method, path, r.text)
    bad_json = e2b_api.post("/v2/sandboxes", content=b"{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["code"] == 400
    templates = e2b_api.get("/templates").json()
    assert "base" in {t["templateID"] for t in templates}
    assert e2b_api.get("/templates/aliases/base").status_code == 200
    assert e2b_api.get("/templates/aliases/nope").status_code == 404


def test_ports_and_unknown_sandboxes(corral_server: ServerProcess, created: dict) -> None:
    url = corral_server.url
    r = httpx.post(url + "/execute", json={"code": "1+1"}, headers=envd_headers(created, port=49999))
    assert r.status_code == 502 and "no code interpreter" in r.json()["message"]  # a base sandbox
    r = httpx.get(url + "/", headers=envd_headers(created, port=8080))
    assert r.status_code == 502 and "port is not open" in r.json()["message"] and "port 8080" in r.json()["message"]
    assert r.json()["port"] == 8080 and r.json()["sandboxId"] == created["sandboxID"]
    for sid in ("doesnotexist", "../etc", "UPPER"):
        r = httpx.get(url + "/health", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"})
        assert r.status_code == 502 and "was not found" in r.json()["message"]
    assert httpx.get(url + "/files?path=/etc/passwd&signature=v1_forged").status_code == 401
    assert httpx.get(url + "/health").json()["status"] == "ok"  # corral's own health is untouched


def test_host_name_routing(corral_server: ServerProcess, created: dict) -> None:
    sid, token = created["sandboxID"], created["envdAccessToken"]
    host = f"49983-{sid}.corral.invalid"
    assert httpx.get(corral_server.url + "/health", headers={"Host": host}).status_code == 204
    r = httpx.post(corral_server.url + "/filesystem.Filesystem/ListDir", json={"path": "/home/user"},
                   headers={"Host": host, "X-Access-Token": token})
    assert r.status_code == 200 and {e["name"] for e in r.json()["entries"]} >= {".profile"}
    r = httpx.post(corral_server.url + "/execute", json={}, headers={"Host": f"49999-{sid}.corral.invalid"})
    assert r.status_code == 401  # /execute asks for the access token
    r = httpx.post(corral_server.url + "/execute", json={"code": "1"},
                   headers={"Host": f"49999-{sid}.corral.invalid", "X-Access-Token": token})
    assert r.status_code == 502 and "no code interpreter" in r.json()["message"]  # a base sandbox
    r = httpx.get(corral_server.url + "/", headers={"Host": f"3000-{sid}.corral.invalid"})
    assert r.status_code == 502 and "port 3000" in r.json()["message"]
    # Another port's host name is a port URL (server/ports.py, CORRAL_DOMAIN): nothing listens there.
    r = httpx.get(corral_server.url + "/", headers={"Host": f"3000-{sid}.localhost"})
    assert r.status_code == 502 and "3000" in r.json()["message"]
    # Without CORRAL_E2B_DOMAIN, a host name that only looks like a sandbox's stays corral's API's.
    r = httpx.get(corral_server.url + "/health", headers={"Host": "49982-server.lan"})
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_host_name_routing_over_tls(tls_server: tuple[ServerProcess, Path]) -> None:
    server, cert = tls_server
    with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=cert), headers={"X-API-Key": server.api_key}) as c:
        sbx = c.post("/v2/sandboxes", json={"templateID": "base"}).json()
        try:
            assert sbx["domain"] == "corral.test"
            host = {"Host": f"49983-{sbx['sandboxID']}.corral.test", "X-Access-Token": sbx["envdAccessToken"]}
            r = c.post("/files", params={"path": "/tmp/t.txt"}, content=b"over tls",
                       headers={**host, "Content-Type": "application/octet-stream"})
            assert r.status_code == 200 and r.json()[0]["path"] == "/tmp/t.txt"
            assert c.get("/files", params={"path": "/tmp/t.txt"}, headers=host).content == b"over tls"
            # Another domain's host name is not a sandbox route here.
            other = c.get("/health", headers={"Host": f"49983-{sbx['sandboxID']}.elsewhere.test"})
            assert other.status_code == 200 and other.json()["status"] == "ok"
        finally:
            c.delete(f"/sandboxes/{sbx['sandboxID']}")
        wait_until(lambda: c.get(f"/v1/sandboxes/{sbx['sandboxID']}").json()["state"] == "killed")


def test_keepalives_and_processes_outliving_their_stream(corral_server: ServerProcess, created: dict) -> None:
    url = corral_server.url + "/process.Process/"
    stream_headers = {**envd_headers(created), "Content-Type": "application/connect+json", "Keepalive-Ping-Interval": "1"}
    body = envelope({"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 2.5; echo done"]}, "stdin": False})
    frames = parse_envelopes(httpx.post(url + "Start", content=body, headers=stream_headers, timeout=30).content)
    assert (0, {"event": {"keepalive": {}}}) in frames  # after each second of silence
    assert frames[-2][1]["event"]["end"]["exited"] is True and frames[-1] == (2, {})
    # A client that goes away leaves its process running (as envd does); it can be re-attached.
    body = envelope({"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 3; echo late"]}, "tag": "t1"})
    with httpx.stream("POST", url + "Start", content=body, headers=stream_headers, timeout=30) as r:
        first = next(r.iter_bytes())
    pid = parse_envelopes(first[: 5 + struct.unpack(">I", first[1:5])[0]])[0][1]["event"]["start"]["pid"]
    listed = httpx.post(url + "List", json={}, headers=envd_headers(created)).json()["processes"]
    assert any(p["pid"] == pid and p["tag"] == "t1" for p in listed)
    again = httpx.post(url + "Connect", content=envelope({"process": {"tag": "t1"}}),
                       headers={**envd_headers(created), "Content-Type": "application/connect+json"}, timeout=30)
    frames = parse_envelopes(again.content)
    assert frames[0][1] == {"event": {"start": {"pid": pid}}}
    assert (0, {"event": {"data": {"stdout": "bGF0ZQo="}}}) in frames  # "late\n"


def test_egress_rules_map_onto_corrals(e2b_api: httpx.Client) -> None:
    body = {"templateID": "base", "network": {"allowOut": ["10.9.9.9", "example.com"], "denyOut": ["0.0.0.0/0"]}}
    sbx = e2b_api.post("/v2/sandboxes", json=body).json()
    sid = sbx["sandboxID"]
    try:
        net = e2b_api.get(f"/v1/sandboxes/{sid}/network").json()  # corral's own view of the same rules
        assert net["allow_out"] == ["10.9.9.9/32", "example.com"] and net["deny_out"] == ["0.0.0.0/0"]
        assert e2b_api.put(f"/sandboxes/{sid}/network", json={"denyOut": ["1.2.3.4"]}).status_code == 204
        net = e2b_api.get(f"/v1/sandboxes/{sid}/network").json()
        assert net["allow_out"] == [] and net["deny_out"] == ["1.2.3.4/32"]  # what PUT leaves out is cleared
        assert e2b_api.put(f"/sandboxes/{sid}/network", json={"allow_internet_access": False}).status_code == 204
        net = e2b_api.get(f"/v1/sandboxes/{sid}/network").json()
        assert net["internet"] is False and net["deny_out"] == []
    finally:
        e2b_api.delete(f"/sandboxes/{sid}")

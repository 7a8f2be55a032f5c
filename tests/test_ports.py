"""Port URLs: a real server inside a real sandbox, reached through corral's proxy (HTTP and WebSocket)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from corral import Sandbox
from helpers import ServerProcess, wait_until

pytestmark = pytest.mark.privileged

# A server for the tests, standard library only: GET answers what it saw, POST echoes the body,
# GET /ws speaks WebSocket and echoes each text or binary message.
SERVER = r'''
import base64, hashlib, json, socket, struct, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, body, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        self._answer(json.dumps(seen).encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self._answer(self.rfile.read(n), "application/octet-stream")

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        r = self.rfile
        while True:
            head = r.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", r.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", r.read(8))[0]
            mask = r.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                return
            if op in (1, 2):
                length = bytes([n]) if n < 126 else b"\x7e" + struct.pack(">H", n)
                self.wfile.write(bytes([0x80 | op]) + length + data)
                self.wfile.flush()

    def log_message(self, *a):
        pass

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''


def start_server(s: Sandbox, port: int = 8000) -> None:
    s.files.write("/home/user/server.py", SERVER)
    s.commands.run(f"python3 /home/user/server.py {port}", background=True)
    wait_until(lambda: port in [p.port for p in s.list_ports()], timeout=20, what=f"a server on port {port}")


@pytest.fixture(scope="module")
def web(corral_server: ServerProcess) -> Iterator[Sandbox]:
    with Sandbox.create(api_key=corral_server.api_key, api_url=corral_server.url) as s:
        start_server(s)
        yield s


def host_headers(s: Sandbox, port: int = 8000) -> dict[str, str]:
    return {"Host": s.get_host(port)}


def test_listed_ports_carry_both_urls(web: Sandbox, corral_server: ServerProcess) -> None:
    (info,) = [p for p in web.list_ports() if p.port == 8000]
    assert info.url == f"http://8000-{web.sandbox_id}.localhost:{corral_server.port}/"
    assert info.path_url == f"{corral_server.url}/v1/sandboxes/{web.sandbox_id}/ports/8000/"
    assert web.get_host(8000) == f"8000-{web.sandbox_id}.localhost:{corral_server.port}"


def test_path_based_http_without_the_api_key(web: Sandbox) -> None:
    r = httpx.get(web.get_url(8000, "/a/b?x=1", path_based=True))
    assert r.status_code == 200
    assert r.json()["path"] == "/a/b?x=1"
    posted = httpx.post(web.get_url(8000, "/echo", path_based=True), content=b"\x00\xffbody" * 1000)
    assert posted.content == b"\x00\xffbody" * 1000


def test_host_based_http_by_the_host_header(web: Sandbox, corral_server: ServerProcess) -> None:
    r = httpx.get(f"{corral_server.url}/some/page", headers=host_headers(web))
    assert r.status_code == 200 and r.json()["path"] == "/some/page"
    assert r.json()["headers"]["x-forwarded-host"] == web.get_host(8000)


def test_a_path_without_its_slash_is_redirected(web: Sandbox, corral_server: ServerProcess) -> None:
    r = httpx.get(f"{corral_server.url}/v1/sandboxes/{web.sandbox_id}/ports/8000")
    assert r.status_code == 307 and r.headers["location"].endswith("/ports/8000/")


def test_the_api_key_never_reaches_the_sandbox(web: Sandbox, corral_server: ServerProcess) -> None:
    r = httpx.get(web.get_url(8000, path_based=True), headers={"X-API-Key": corral_server.api_key})
    seen = r.json()["headers"]
    assert "x-api-key" not in seen and corral_server.api_key not in json.dumps(seen)


def test_a_closed_port_is_a_clear_502(web: Sandbox, corral_server: ServerProcess) -> None:
    for r in (httpx.get(web.get_url(9, path_based=True)), httpx.get(corral_server.url + "/", headers=host_headers(web, 9))):
        assert r.status_code == 502
        assert r.json()["code"] == "port_closed" and "port 9" in r.json()["message"]


def test_unknown_sandboxes_and_bad_ports(corral_server: ServerProcess) -> None:
    r = httpx.get(f"{corral_server.url}/v1/sandboxes/nosuchsandbox/ports/8000/")
    assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found"
    r = httpx.get(f"{corral_server.url}/v1/sandboxes/nosuchsandbox/ports/70000/")
    assert r.status_code == 400


@pytest.mark.parametrize("how", ["path", "host"])
def test_websocket_traffic_both_ways(web: Sandbox, corral_server: ServerProcess, how: str) -> None:
    sock = socket.create_connection(("127.0.0.1", corral_server.port))  # the name is the host's; dial loopback
    if how == "path":
        uri = f"ws://127.0.0.1:{corral_server.port}/v1/sandboxes/{web.sandbox_id}/ports/8000/ws"
    else:
        uri = f"ws://{web.get_host(8000)}/ws"
    with connect(uri, sock=sock) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"


def test_private_ports_ask_for_the_traffic_token(corral_server: ServerProcess) -> None:
    with Sandbox.create(public_ports=False, api_key=corral_server.api_key, api_url=corral_server.url) as s:
        start_server(s)
        token = s.get_info().traffic_token
        assert token
        plain = f"{corral_server.url}/v1/sandboxes/{s.sandbox_id}/ports/8000/"
        refused = httpx.get(plain)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert httpx.get(plain, headers={"X-Corral-Traffic-Token": "wrong"}).status_code == 401
        assert httpx.get(plain, headers={"X-API-Key": corral_server.api_key}).status_code == 401  # not the key
        ok = httpx.get(plain, headers={"X-Corral-Traffic-Token": token})
        assert ok.status_code == 200 and token not in json.dumps(ok.json())
        with httpx.Client() as browser:  # the query parameter once, then the cookie
            first = browser.get(s.get_url(8000, "/page", path_based=True))
            assert first.status_code == 200 and "traffic_token" not in first.json()["path"]
            assert "corral_traffic_token" in first.headers["set-cookie"]
            again = browser.get(plain + "other")
            assert again.status_code == 200 and "corral_traffic_token" not in again.json()["headers"].get("cookie", "")
        ws_uri = f"{corral_server.url.replace('http://', 'ws://')}/v1/sandboxes/{s.sandbox_id}/ports/8000/ws"
        with pytest.raises(InvalidStatus), connect(ws_uri):
            pass  # refused at the handshake
        with connect(ws_uri, additional_headers={"X-Corral-Traffic-Token": token}) as ws:
            ws.send("private")
            assert ws.recv(timeout=10) == "private"

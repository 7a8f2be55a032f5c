"""Directory watching (inotify inside the sandbox) and signed file URLs, against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

import corral
from corral import Sandbox
from corral.sdk._sync.files import WatchHandle
from helpers import wait_until

pytestmark = pytest.mark.timeout(120)

W = "/home/user/w"


def expect(handle: WatchHandle, wanted: set[tuple[str, str]], timeout: float = 15.0) -> list[tuple[str, str]]:
    """Read events until each (type, path) in ``wanted`` was seen (keepalives bound each wait)."""
    seen: list[tuple[str, str]] = []
    missing = set(wanted)
    deadline = time.monotonic() + timeout
    for ev in handle:
        assert ev.time is not None
        seen.append((ev.type, ev.path))
        missing.discard((ev.type, ev.path))
        if not missing:
            return seen
        assert time.monotonic() < deadline, f"missing {missing}; got {seen}"
    raise AssertionError(f"the watch ended; missing {missing}; got {seen}")


def agent_fds(sbx: Sandbox) -> int:
    """How many fds the agent (pid 2 in the sandbox) has open (the command's own ones included)."""
    r = sbx.commands.run("cat /proc/2/comm; ls /proc/2/fd | wc -l", user="root")
    comm, count = r.stdout.split()
    assert comm.startswith("python"), comm
    return int(count)


@pytest.fixture()
def watched(sbx: Sandbox) -> Iterator[Sandbox]:
    sbx.files.make_dir(W)
    yield sbx


def test_watch_reports_each_kind_of_change(watched: Sandbox) -> None:
    sbx = watched
    with sbx.files.watch_dir(W) as h:
        sbx.files.write(f"{W}/a.txt", "hello")
        expect(h, {("create", f"{W}/a.txt"), ("write", f"{W}/a.txt")})
        sbx.commands.run(f"chmod 600 {W}/a.txt")
        expect(h, {("chmod", f"{W}/a.txt")})
        sbx.files.rename(f"{W}/a.txt", f"{W}/b.txt")
        expect(h, {("rename", f"{W}/a.txt"), ("create", f"{W}/b.txt")})
        sbx.commands.run(f"echo more >> {W}/b.txt")
        expect(h, {("write", f"{W}/b.txt")})
        sbx.files.remove(f"{W}/b.txt")
        expect(h, {("remove", f"{W}/b.txt")})


def test_watch_recursive_or_not(watched: Sandbox) -> None:
    sbx = watched
    sbx.files.make_dir(f"{W}/sub")
    flat = sbx.files.watch_dir(W)
    deep = sbx.files.watch_dir(W, recursive=True)
    try:
        sbx.files.write(f"{W}/sub/inner", "x")
        sbx.files.write(f"{W}/marker", "x")
        seen = expect(flat, {("create", f"{W}/marker")})
        assert not [p for _, p in seen if p.startswith(f"{W}/sub/")], seen
        expect(deep, {("create", f"{W}/sub/inner"), ("create", f"{W}/marker")})
        # a directory created after the watch started is watched too
        sbx.files.make_dir(f"{W}/later")
        expect(deep, {("create", f"{W}/later")})
        sbx.files.write(f"{W}/later/f", "y")
        expect(deep, {("create", f"{W}/later/f"), ("write", f"{W}/later/f")})
    finally:
        flat.stop()
        deep.stop()


def test_watch_on_event_and_stop_frees_the_inotify_fd(watched: Sandbox) -> None:
    sbx = watched
    before = agent_fds(sbx)
    got: list[corral.sdk.models.FilesystemEvent] = []

    def on_event(ev: corral.sdk.models.FilesystemEvent) -> None:
        got.append(ev)
        if ev.path == f"{W}/stop":
            handle.stop()

    handle = sbx.files.watch_dir(W, on_event=on_event)
    assert agent_fds(sbx) == before + 2  # the watch connection and its inotify fd
    sbx.files.write(f"{W}/one", "1")
    sbx.files.write(f"{W}/stop", "2")
    handle.run()  # returns once the handler stopped the watch
    assert ("create", f"{W}/one") in [(e.type, e.path) for e in got]
    assert list(handle) == []
    wait_until(lambda: agent_fds(sbx) == before, timeout=15, what="the agent to close the inotify fd")


def test_watch_missing_path_and_file(watched: Sandbox) -> None:
    with pytest.raises(corral.FileNotFoundError):
        watched.files.watch_dir("/no/such/dir")
    watched.files.write(f"{W}/f", "x")
    with pytest.raises(corral.NotADirectoryError):
        watched.files.watch_dir(f"{W}/f")
    with pytest.raises(corral.PermissionDeniedError):
        watched.files.watch_dir("/root")  # as "user"


# --------------------------------------------------------------------------- signed URLs


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return urlunsplit(parts._replace(query=urlencode(q)))


def flip(s: str) -> str:
    return s[:-1] + ("0" if s[-1] != "0" else "1")


def refused(resp: httpx.Response, status: int = 403) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    return str(resp.json()["message"])


def test_signed_download_and_upload_without_the_key(sbx: Sandbox, corral_server) -> None:  # type: ignore[no-untyped-def]
    sbx.files.write("data/hello.txt", "hello signed")
    url = sbx.files.download_url("data/hello.txt")
    assert url.startswith(corral_server.url + f"/v1/sandboxes/{sbx.sandbox_id}/files/signed?")
    r = httpx.get(url)  # no API key
    assert r.status_code == 200 and r.content == b"hello signed"
    assert parse_qs(urlsplit(url).query)["path"] == ["/home/user/data/hello.txt"]

    up = sbx.files.upload_url("/home/user/up/new.bin", expires_in=600)
    payload = bytes(range(256)) * 1000
    r = httpx.put(up, content=payload)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(payload)
    assert sbx.files.read("/home/user/up/new.bin", format="bytes") == payload

    # the operation is part of the grant
    assert "upload" in refused(httpx.get(up))
    assert "download" in refused(httpx.put(url, content=b"x"))
    assert sbx.files.read("data/hello.txt") == "hello signed"
    # the exemption is narrow: the ordinary file routes and the URL maker still need the key
    base = corral_server.url + f"/v1/sandboxes/{sbx.sandbox_id}"
    assert httpx.get(base + "/files", params={"path": "/home/user/data/hello.txt"}).status_code == 401
    assert httpx.post(base + "/files/url", json={"path": "x", "operation": "download"}).status_code == 401
    assert httpx.delete(url).status_code == 401


def test_signed_urls_refuse_tampering(sbx: Sandbox, api: dict[str, str]) -> None:
    sbx.files.write("/home/user/a.txt", "a")
    sbx.files.write("/home/user/b.txt", "b")
    url = sbx.files.download_url("/home/user/a.txt")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert httpx.get(url).status_code == 200
    for tampered in [
        with_query(url, signature=flip(q["signature"])),
        with_query(url, path="/home/user/b.txt"),
        with_query(url, expires=str(int(q["expires"]) + 1)),
        with_query(url, user="root"),
        with_query(url, op="upload"),
        with_query(url, signature=""),
    ]:
        resp = httpx.get(tampered)
        assert resp.status_code in (400, 403), (tampered, resp.text)
    # a URL of sandbox A used on sandbox B's path refused
    with Sandbox.create(**api) as other:
        other.files.write("/home/user/a.txt", "other")
        moved = url.replace(f"/sandboxes/{sbx.sandbox_id}/", f"/sandboxes/{other.sandbox_id}/")
        assert moved != url
        refused(httpx.get(moved))


def test_signed_urls_expire(sbx: Sandbox) -> None:
    sbx.files.write("/home/user/e.txt", "e")
    url = sbx.files.download_url("/home/user/e.txt", expires_in=1)
    wait_until(lambda: httpx.get(url).status_code == 403, timeout=10, what="the URL to expire")
    assert "expired" in refused(httpx.get(url))
    with pytest.raises(corral.InvalidRequestError):
        sbx.files.download_url("/home/user/e.txt", expires_in=8 * 24 * 3600)
    with pytest.raises(corral.InvalidRequestError):
        sbx.files.upload_url("/home/user/e.txt", expires_in=0)


def test_signed_urls_stop_working_when_the_sandbox_is_killed(api: dict[str, str]) -> None:
    sbx = Sandbox.create(**api)
    sbx.files.write("/home/user/k.txt", "k")
    down = sbx.files.download_url("/home/user/k.txt")
    up = sbx.files.upload_url("/home/user/k2.txt")
    assert httpx.get(down).status_code == 200
    sbx.kill()
    for resp in (httpx.get(down), httpx.put(up, content=b"x")):
        assert resp.status_code in (404, 409), resp.text
        assert resp.json()["code"] in ("sandbox_not_running", "sandbox_not_found")


def test_store_adds_the_url_secret_column_to_an_old_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from corral.store import SandboxRecord, Store
    from corral.store.sqlite import SCHEMA

    db = tmp_path / "old.db"
    old = sqlite3.connect(str(db))
    old.executescript(SCHEMA.replace(",\n    url_secret TEXT NOT NULL DEFAULT ''", ""))
    old.execute("INSERT INTO sandboxes (id, template, state, backend, created_at, end_at, cpu_count, memory_mb, "
                "disk_mb, internet) VALUES ('old', 'base', 'killed', 'namespace', 1, 2, 1, 512, 1024, 1)")
    old.commit()
    old.close()
    store = Store(db)
    assert store.get("old").url_secret == ""  # type: ignore[union-attr]
    store.insert(SandboxRecord(id="new", template="base", state="running", backend="namespace", created_at=3,
                               end_at=4, cpu_count=1, memory_mb=512, disk_mb=1024, internet=True, url_secret="ab"))
    store.close()
    assert Store(db).get("new").url_secret == "ab"  # type: ignore[union-attr]

"""Directory transfers against the real server and real sandboxes: multipart upload of many files,
tar download of a tree, the SDK helpers and ``corral cp -r`` both ways."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from corral.errors import FileNotFoundError_, InvalidRequestError
from helpers import ServerProcess

BOUNDARY = "test-boundary-1234"
BINARY = bytes(range(256)) * 64


def multipart(parts: list[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    body = b""
    for name, data in parts:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def post_multipart(server: ServerProcess, sandbox_id: str, dir: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/sandboxes/{sandbox_id}/files/multipart",
        params={"dir": dir, "user": "user"},
        content=body,
        headers={"X-API-Key": server.api_key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=60,
    )


def sh(sbx: Sandbox, cmd: str) -> str:
    return sbx.commands.run(cmd, user="root").stdout


# ------------------------------------------------------------------------------- multipart
def test_multipart_upload_of_a_tree(corral_server: ServerProcess, sbx: Sandbox) -> None:
    parts = [
        ("top.txt", b"top level"),
        ("a/b/c/nested.txt", b"deep inside"),
        ("a/bin.dat", BINARY),
        ("a/empty", b""),
        ("odd name \u00e9.txt", b"unicode name"),
    ]
    r = post_multipart(corral_server, sbx.sandbox_id, "/home/user/target", multipart(parts))
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert [e["path"] for e in entries] == [f"/home/user/target/{n}" for n, _ in parts]
    assert [e["size"] for e in entries] == [len(d) for _, d in parts]
    assert all(e["owner"] == "user" and e["type"] == "file" for e in entries)
    for name, data in parts:
        assert sbx.files.read(f"/home/user/target/{name}", format="bytes") == data


def test_multipart_body_boundary_split_across_chunks(corral_server: ServerProcess, sbx: Sandbox) -> None:
    """A streamed body in tiny chunks (the delimiter split anywhere) and a part bigger than a chunk."""
    big = os.urandom(3 << 20)
    body = multipart([("x/big", big), ("y", b"--" + BOUNDARY.encode()[:-1] + b"\r\n")])

    def pieces() -> object:
        for off in range(0, 4095, 7):  # 4095 = 7 * 585
            yield body[off : off + 7]
        for off in range(4095, len(body), 100_003):
            yield body[off : off + 100_003]

    r = httpx.post(
        f"{corral_server.url}/v1/sandboxes/{sbx.sandbox_id}/files/multipart",
        params={"dir": "up"},
        content=pieces(),  # type: ignore[arg-type]
        headers={"X-API-Key": corral_server.api_key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert hashlib.sha256(sbx.files.read("/home/user/up/x/big", format="bytes")).digest() == hashlib.sha256(
        big
    ).digest()
    assert sbx.files.read("up/y", format="bytes") == b"--" + BOUNDARY.encode()[:-1] + b"\r\n"


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "..", "", "a/..", "evil/"])
def test_multipart_refuses_traversal(corral_server: ServerProcess, sbx: Sandbox, name: str) -> None:
    r = post_multipart(corral_server, sbx.sandbox_id, "/home/user/target", multipart([(name, b"bad")]))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"
    found = sh(sbx, "{ find / -xdev -name evil; find /home /tmp /etc /root -name evil; } 2>/dev/null")
    assert found == ""
    assert not sbx.files.exists("/home/user/target")


def test_multipart_refuses_nul_long_and_malformed(corral_server: ServerProcess, sbx: Sandbox) -> None:
    for body in (
        multipart([("a%00b", b"x")]).replace(b"%00", b"\0"),
        multipart([("x" * 4097, b"x")]),
        b"not multipart at all",
        multipart([("ok", b"x")])[:-30],  # truncated
    ):
        r = post_multipart(corral_server, sbx.sandbox_id, "/home/user/target", body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "invalid_request"
    r = httpx.post(
        f"{corral_server.url}/v1/sandboxes/{sbx.sandbox_id}/files/multipart",
        params={"dir": "/home/user/target"}, content=b"{}",
        headers={"X-API-Key": corral_server.api_key, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    assert not sbx.files.exists("/home/user/target/ok")


def test_multipart_as_user_cannot_write_to_root_dirs(corral_server: ServerProcess, sbx: Sandbox) -> None:
    r = post_multipart(corral_server, sbx.sandbox_id, "/etc", multipart([("owned", b"x")]))
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "permission_denied"


# ------------------------------------------------------------------------------- tar download
def make_tree(sbx: Sandbox) -> bytes:
    big = os.urandom(30 << 20)
    sbx.files.write("/home/user/tree/big.bin", big)
    sbx.files.write("/home/user/tree/sub/deep/file.txt", "deep")
    sbx.files.write("/home/user/tree/empty", b"")
    sh(sbx, "su user -c 'mkdir /home/user/tree/emptydir && ln -s / /home/user/tree/rootlink "
            "&& ln -s sub/deep/file.txt /home/user/tree/inside'")
    return big


def test_tar_download_of_a_tree(corral_server: ServerProcess, sbx: Sandbox) -> None:
    big = make_tree(sbx)
    with httpx.stream(
        "GET", f"{corral_server.url}/v1/sandboxes/{sbx.sandbox_id}/files/tar",
        params={"path": "tree"}, headers={"X-API-Key": corral_server.api_key}, timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-tar"
        data = b"".join(r.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "big.bin", "empty", "emptydir", "inside", "rootlink", "sub", "sub/deep", "sub/deep/file.txt"
        }
        assert members["rootlink"].issym() and members["rootlink"].linkname == "/"
        assert members["inside"].issym() and members["inside"].linkname == "sub/deep/file.txt"
        assert members["emptydir"].isdir()
        assert members["big.bin"].uname == "user"
        f = tar.extractfile(members["big.bin"])
        assert f is not None
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(big).hexdigest()


def test_tar_download_errors(corral_server: ServerProcess, sbx: Sandbox) -> None:
    base = f"{corral_server.url}/v1/sandboxes/{sbx.sandbox_id}/files/tar"
    headers = {"X-API-Key": corral_server.api_key}
    r = httpx.get(base, params={"path": "/home/user/missing"}, headers=headers)
    assert r.status_code == 404 and r.json()["code"] == "file_not_found"
    sbx.files.write("/home/user/plain", "x")
    r = httpx.get(base, params={"path": "/home/user/plain"}, headers=headers)
    assert r.status_code == 400 and r.json()["code"] == "not_a_directory"
    r = httpx.get(base, params={"path": "/root"}, headers=headers)
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"


# ------------------------------------------------------------------------------- SDK
def test_sdk_write_files_upload_and_download_dir(sbx: Sandbox, tmp_path: Path) -> None:
    written = sbx.files.write_files([("one.txt", "1"), ("d/two.bin", b"\x00\x02")], dir="/home/user/wf")
    assert [e.path for e in written] == ["/home/user/wf/one.txt", "/home/user/wf/d/two.bin"]
    assert sbx.files.read("/home/user/wf/d/two.bin", format="bytes") == b"\x00\x02"
    assert [e.path for e in sbx.files.write_files({"m.txt": "mapped"})] == ["/home/user/m.txt"]
    with pytest.raises(InvalidRequestError):
        sbx.files.write_files([("../escape", "x")], dir="/home/user/wf")

    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.bin").write_bytes(BINARY)
    (src / "top.txt").write_text("top")
    (src / "empty").write_bytes(b"")
    (src / "link").symlink_to("/etc/passwd")  # not followed, not uploaded
    entries = sbx.files.upload_dir(src, "/home/user/up")
    assert sorted(e.path for e in entries) == [
        "/home/user/up/a/b/f.bin", "/home/user/up/empty", "/home/user/up/top.txt"
    ]
    sh(sbx, "su user -c 'ln -s / /home/user/up/rootlink && ln -s a/b/f.bin /home/user/up/inlink'")

    dest = tmp_path / "dest"
    paths = sbx.files.download_dir("/home/user/up", dest)
    assert (dest / "a" / "b" / "f.bin").read_bytes() == BINARY
    assert (dest / "top.txt").read_text() == "top"
    assert (dest / "empty").read_bytes() == b""
    assert os.readlink(dest / "inlink") == "a/b/f.bin"
    assert not os.path.lexists(dest / "rootlink")  # points outside: skipped
    assert str(dest / "top.txt") in paths
    with pytest.raises(FileNotFoundError_):
        sbx.files.download_dir("/home/user/nope", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_safe_extract_refuses_hostile_archives(tmp_path: Path) -> None:
    from corral.errors import CorralError
    from corral.sdk import _tar

    def archive(*members: tuple[str, bytes | None, str | None]) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data, link in members:
                info = tarfile.TarInfo(name)
                if link is not None:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                else:
                    info.size = len(data or b"")
                    tar.addfile(info, io.BytesIO(data or b""))
        buf.seek(0)
        return buf

    dest = tmp_path / "d"
    for bad in ("../evil", "/tmp/evil-abs", "a/../../evil"):
        with pytest.raises(CorralError):
            _tar.extract(archive((bad, b"x", None)), str(dest))
    # A symlink to a directory outside is skipped, so a member through it lands inside.
    outside = tmp_path / "outside"
    outside.mkdir()
    _tar.extract(archive(("esc", None, str(outside)), ("esc/x", b"x", None)), str(dest))
    assert not (outside / "x").exists() and (dest / "esc" / "x").read_bytes() == b"x"
    assert not list(tmp_path.glob("evil*")) and not Path("/tmp/evil-abs").exists()


# ------------------------------------------------------------------------------- CLI
def test_cli_cp_recursive_both_ways(corral_server: ServerProcess, sbx: Sandbox, tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_API_URL": corral_server.url, "CORRAL_API_KEY": corral_server.api_key}

    def corral(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "corral.cli.main", *args], env=env, capture_output=True,
                              timeout=120)

    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("print('hi')\n")
    (src / "data.bin").write_bytes(BINARY)
    up = corral("cp", "-r", str(src), f"{sbx.sandbox_id}:/home/user/proj")
    assert up.returncode == 0, up.stderr
    assert sbx.files.read("/home/user/proj/pkg/mod.py") == "print('hi')\n"
    assert sbx.files.read("/home/user/proj/data.bin", format="bytes") == BINARY
    again = corral("cp", "-r", str(src), f"{sbx.sandbox_id}:/home/user/proj")  # exists: goes inside
    assert again.returncode == 0, again.stderr
    assert sbx.files.exists("/home/user/proj/proj/pkg/mod.py")

    down = corral("cp", "-r", f"{sbx.sandbox_id}:/home/user/proj", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back" / "pkg" / "mod.py").read_text() == "print('hi')\n"
    assert (tmp_path / "back" / "data.bin").read_bytes() == BINARY
    assert (tmp_path / "back" / "proj" / "data.bin").read_bytes() == BINARY

    missing = corral("cp", "-r", f"{sbx.sandbox_id}:/home/user/nope", str(tmp_path / "nope"))
    assert missing.returncode != 0 and not (tmp_path / "nope").exists()


def test_multipart_is_all_or_nothing(corral_server: ServerProcess, sbx: Sandbox) -> None:
    """A bad name after good parts fails the request, and none of its files is written."""
    sbx.files.write("/home/user/existing/keep.txt", "old")
    body = multipart([("good.txt", b"g" * 100_000), ("sub/also-good.txt", b"x"), ("../evil", b"bad")])
    r = post_multipart(corral_server, sbx.sandbox_id, "/home/user/existing", body)
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    assert sh(sbx, "ls -A /home/user/existing").split() == ["keep.txt"]  # no good.txt, sub/ or staging dir
    assert sbx.files.read("/home/user/existing/keep.txt") == "old"
    r = post_multipart(corral_server, sbx.sandbox_id, "/home/user/new/deeper", body)
    assert r.status_code == 400
    assert not sbx.files.exists("/home/user/new")

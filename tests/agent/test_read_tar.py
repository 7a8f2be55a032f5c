"""The agent's read_tar op against a real agent on the host: a directory as a tar stream."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from corral.errors import FileNotFoundError_, NotADirectoryError_, PermissionDeniedError

from .conftest import Agent


async def _tar(agent: Agent, path: str, user: str = "root") -> bytes:
    return b"".join([c async for c in agent.client.read_tar(path, user)])


def test_read_tar_streams_a_tree(agent: Agent, shared_dir: Path) -> None:
    root = shared_dir / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    (root / "to_root").symlink_to("/")
    os.link(root / "a.txt", root / "hard.txt")
    os.mkfifo(root / "fifo")  # left out (reading it would block)
    big = os.urandom(3 << 20)
    (root / "big").write_bytes(big)

    data = asyncio.run(_tar(agent, str(root)))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "a.txt", "big", "empty_dir", "hard.txt", "sub", "sub/b.bin", "sub/deeper", "sub/deeper/empty", "to_root"
        }
        names = [m.name for m in tar.getmembers()]
        assert names.index("sub") < names.index("sub/b.bin") < names.index("sub/deeper/empty")
        assert members["to_root"].issym() and members["to_root"].linkname == "/"
        assert members["empty_dir"].isdir() and members["sub"].isdir()
        assert members["hard.txt"].isreg()

        def content(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        assert content("a.txt") == b"alpha" == content("hard.txt")
        assert content("sub/b.bin") == bytes(range(256)) * 1000
        assert content("sub/deeper/empty") == b""
        assert hashlib.sha256(content("big")).digest() == hashlib.sha256(big).digest()


def test_read_tar_errors_before_the_first_byte(agent: Agent, shared_dir: Path) -> None:
    (shared_dir / "file").write_text("x")
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_text("s")

    async def first(path: str, user: str = "root") -> None:
        stream = agent.client.read_tar(path, user)
        try:
            await stream.__anext__()
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    with pytest.raises(FileNotFoundError_):
        asyncio.run(first(str(shared_dir / "missing")))
    with pytest.raises(NotADirectoryError_):
        asyncio.run(first(str(shared_dir / "file")))
    if os.geteuid() == 0:
        with pytest.raises(PermissionDeniedError):
            asyncio.run(first(str(private), user="nobody"))


def test_read_tar_as_a_user_skips_what_it_cannot_read(agent: Agent, shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    root = shared_dir / "mixed"
    root.mkdir()
    (root / "public").write_text("p")
    (root / "secret").write_text("s")
    (root / "secret").chmod(0o600)
    data = asyncio.run(_tar(agent, str(root), user="nobody"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        assert [m.name for m in tar.getmembers()] == ["public"]

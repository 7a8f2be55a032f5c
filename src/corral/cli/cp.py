"""``corral cp [-r] SRC DST``: copy a file (or with ``-r`` a directory tree) into or out of a
sandbox (``ID:/path``), streamed: trees go up as one multipart request and come down as a tar
stream extracted safely."""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from typing import Any

from corral.cli.common import connection, connection_options, usage_error
from corral.errors import FileNotFoundError_
from corral.sdk import Sandbox


def add_parser(nouns: Any) -> None:
    p = nouns.add_parser(
        "cp",
        help="copy a file or directory into or out of a sandbox",
        description="Copy a file between this machine and a sandbox. One side is ID:/path; "
        "the other a local path, or - for stdin/stdout. With -r, copy a directory tree.",
        parents=[connection_options()],
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--user", default="user", help="user whose permissions apply in the sandbox")
    p.add_argument("-r", "--recursive", action="store_true", help="copy a directory tree")
    p.set_defaults(func=run)


def split_remote(arg: str) -> tuple[str, str] | None:
    """``ID:/path`` as (ID, path); None for a local path (no colon before the first slash)."""
    head, sep, path = arg.partition(":")
    if not sep or not head or "/" in head or head in (".", ".."):
        return None
    return head, path or "."


def run(args: argparse.Namespace) -> int:
    src, dst = split_remote(args.src), split_remote(args.dst)
    if (src is None) == (dst is None):
        usage_error("cp: exactly one of SRC and DST must be a sandbox path (ID:/path)")
    if args.recursive and "-" in (args.src, args.dst):
        usage_error("cp: -r copies directories, not stdin/stdout")
    if dst is not None:
        if args.recursive and os.path.isdir(args.src):
            return upload_tree(args, args.src, *dst)
        return upload(args, args.src, *dst)
    assert src is not None
    if args.recursive:
        return download_tree(args, *src, args.dst)
    return download(args, *src, args.dst)


def upload_tree(args: argparse.Namespace, local: str, sandbox_id: str, path: str) -> int:
    """Like cp -r: into DST when it does not exist, into DST/basename(SRC) when it is a directory."""
    sbx = Sandbox.connect(sandbox_id, **connection(args))
    try:
        name = os.path.basename(os.path.normpath(local))
        if path.endswith("/") or _remote_is_dir(sbx, path, args.user):
            path = path.rstrip("/") + "/" + name
        sbx.files.make_dir(path, user=args.user)
        sbx.files.upload_dir(local, path, user=args.user)
    finally:
        sbx.close()
    return 0


def _remote_is_dir(sbx: Sandbox, path: str, user: str) -> bool:
    try:
        return sbx.files.get_info(path, user=user).type == "dir"
    except FileNotFoundError_:
        return False


def download_tree(args: argparse.Namespace, sandbox_id: str, path: str, local: str) -> int:
    """Like cp -r: into DST when it does not exist, into DST/basename(SRC) when it is a directory."""
    if os.path.isdir(local):
        local = os.path.join(local, posixpath.basename(path.rstrip("/")) or "root")
    sbx = Sandbox.connect(sandbox_id, **connection(args))
    try:
        sbx.files.download_dir(path, local, user=args.user)
    finally:
        sbx.close()
    return 0


def upload(args: argparse.Namespace, local: str, sandbox_id: str, path: str) -> int:
    if path.endswith("/") and local != "-":
        path += os.path.basename(local)
    sbx = Sandbox.connect(sandbox_id, **connection(args))
    try:
        if local == "-":
            sbx.files.write(path, sys.stdin.buffer, user=args.user)
        else:
            with open(local, "rb") as f:
                sbx.files.write(path, f, user=args.user)
    finally:
        sbx.close()
    return 0


def download(args: argparse.Namespace, sandbox_id: str, path: str, local: str) -> int:
    if local != "-" and os.path.isdir(local):
        local = os.path.join(local, posixpath.basename(path.rstrip("/")))
    sbx = Sandbox.connect(sandbox_id, **connection(args))
    try:
        chunks = sbx.files.read(path, format="stream", user=args.user)
        if local == "-":
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            partial = local + ".corral-partial"
            try:
                with open(partial, "wb") as f:
                    for chunk in chunks:
                        f.write(chunk)
                os.replace(partial, local)
            except BaseException:
                if os.path.exists(partial):
                    os.unlink(partial)
                raise
    finally:
        sbx.close()
    return 0

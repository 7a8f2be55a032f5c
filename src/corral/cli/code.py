"""``corral run-code ID < cell.py`` and ``corral code-context``: the code interpreter."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from corral.cli.common import connection, connection_options, key_values, usage_error
from corral.sdk import ExecutionError, OutputMessage, Result, Sandbox
from corral.sdk.models import to_jsonable


def add_parser(nouns: Any) -> None:
    p = nouns.add_parser(
        "run-code",
        help="run a cell in a sandbox's Jupyter kernel",
        description="Run code (FILE, or standard input) in a code context of the sandbox (template "
        "code-interpreter). stdout and stderr stream as the cell runs; results print as text (images and "
        "other binary formats as a one-line summary, all formats with --json). Exits 1 if the cell failed.",
        parents=[connection_options()],
    )
    p.add_argument("sandbox_id", metavar="ID")
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="the code (default: standard input)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--language", "-l", help="python (default), javascript, typescript, bash or r")
    which.add_argument("--context", "-c", metavar="CONTEXT_ID", help="a context from `corral code-context create`")
    p.add_argument("--env", action="append", metavar="K=V", help="environment variable for this run, repeatable")
    p.add_argument("--timeout", type=float, help="seconds before the kernel is interrupted (default: none)")
    p.add_argument("--json", action="store_true", help="print the whole execution as JSON at the end")
    p.set_defaults(func=run_code)

    c = nouns.add_parser(
        "code-context",
        help="list, create, restart or remove code contexts",
        description="Code contexts: each is a kernel whose state persists across run-code calls.",
        parents=[connection_options()],
    )
    c.add_argument("action", choices=["list", "create", "restart", "remove"])
    c.add_argument("sandbox_id", metavar="ID")
    c.add_argument("context_id", nargs="?", metavar="CONTEXT_ID", help="for restart and remove")
    c.add_argument("--language", "-l", help="for create: python (default), javascript, typescript, bash or r")
    c.add_argument("--cwd", help="for create: the kernel's working directory (default /home/user)")
    c.set_defaults(func=code_context)


def _read_code(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        usage_error(f"run-code: cannot read {path}: {e.strerror}")
        raise


def _summary(result: Result) -> str:
    if result.text is not None:
        return result.text
    for fmt in ("png", "jpeg", "pdf"):
        value = getattr(result, fmt)
        if value is not None:
            return f"[{fmt}: {len(base64.b64decode(value))} bytes]"
    return "[" + ", ".join(result.formats()) + "]"


def run_code(args: argparse.Namespace) -> int:
    code = _read_code(args.file)

    def out(msg: OutputMessage) -> None:
        sys.stdout.write(msg.line)
        sys.stdout.flush()

    def err(msg: OutputMessage) -> None:
        sys.stderr.write(msg.line)
        sys.stderr.flush()

    def result(r: Result) -> None:
        if not args.json:
            print(_summary(r), flush=True)

    def error(e: ExecutionError) -> None:
        sys.stderr.write((e.traceback or str(e)).rstrip("\n") + "\n")
        sys.stderr.flush()

    sbx = Sandbox.connect(args.sandbox_id, **connection(args))
    try:
        execution = sbx.run_code(
            code, language=args.language, context=args.context, envs=key_values(args.env, "env"),
            timeout=args.timeout, on_stdout=out, on_stderr=err, on_result=result, on_error=error,
        )  # fmt: skip
    finally:
        sbx.close()
    if args.json:
        print(json.dumps(to_jsonable(execution), indent=1))
    return 1 if execution.error else 0


def code_context(args: argparse.Namespace) -> int:
    if args.action in ("restart", "remove") and not args.context_id:
        usage_error(f"code-context {args.action}: which context? (corral code-context {args.action} ID CONTEXT_ID)")
    sbx = Sandbox.connect(args.sandbox_id, **connection(args))
    try:
        if args.action == "list":
            for ctx in sbx.list_code_contexts():
                print(f"{ctx.id}\t{ctx.language}\t{ctx.cwd}")
        elif args.action == "create":
            print(sbx.create_code_context(language=args.language, cwd=args.cwd).id)
        elif args.action == "restart":
            sbx.restart_code_context(args.context_id)
        else:
            sbx.remove_code_context(args.context_id)
    finally:
        sbx.close()
    return 0

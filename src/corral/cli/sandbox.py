"""``corral sandbox create|list|info|kill``."""

from __future__ import annotations

import argparse
from typing import Any

from corral.cli.common import connection, connection_options, key_values, print_json
from corral.errors import SandboxNotRunningError
from corral.sdk import Sandbox, SandboxInfo


def add_parser(nouns: Any) -> None:
    conn = connection_options()
    p = nouns.add_parser("sandbox", help="create, list, inspect and kill sandboxes", parents=[conn])
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    create = verbs.add_parser("create", help="start a sandbox and print its id", parents=[conn])
    create.add_argument("--template", default="base")
    create.add_argument("--timeout", type=int, default=300, help="lifetime in seconds (default 300)")
    create.add_argument("--metadata", action="append", metavar="K=V", help="repeatable")
    create.add_argument("--env", action="append", metavar="K=V", help="sandbox-wide env var, repeatable")
    create.add_argument("--cpu", type=float, dest="cpu_count", help="CPU quota in cores")
    create.add_argument("--memory", type=int, dest="memory_mb", help="memory limit in MiB")
    create.add_argument("--disk", type=int, dest="disk_mb", help="writable layer size in MiB")
    create.add_argument("--no-internet", action="store_true", help="no outbound network")
    create.add_argument(
        "--isolation", choices=("namespace", "gvisor", "microvm", "auto"),
        help="the backend (default: the template's, else the server's); `corral backends` lists them",
    )  # fmt: skip
    create.add_argument("--json", action="store_true", help="print the sandbox's info as JSON")
    create.set_defaults(func=create_cmd)

    ls = verbs.add_parser("list", aliases=["ls"], help="list sandboxes", parents=[conn])
    ls.add_argument("--state", action="append", help="running, killed, expired, failed (repeatable)")
    ls.add_argument("--metadata", action="append", metavar="K=V", help="only sandboxes with it, repeatable")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_cmd)

    info = verbs.add_parser("info", help="show one sandbox", parents=[conn])
    info.add_argument("sandbox_id", metavar="ID")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=info_cmd)

    kill = verbs.add_parser("kill", help="kill a sandbox", parents=[conn])
    kill.add_argument("sandbox_id", metavar="ID")
    kill.set_defaults(func=kill_cmd)


def create_cmd(args: argparse.Namespace) -> int:
    sbx = Sandbox.create(
        template=args.template,
        timeout=args.timeout,
        metadata=key_values(args.metadata, "metadata"),
        envs=key_values(args.env, "env"),
        cpu_count=args.cpu_count,
        memory_mb=args.memory_mb,
        disk_mb=args.disk_mb,
        internet=not args.no_internet,
        isolation=args.isolation,
        **connection(args),
    )
    try:
        if args.json:
            print_json(sbx.get_info())
        else:
            print(sbx.sandbox_id)
    finally:
        sbx.close()
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    sandboxes = Sandbox.list(
        state=args.state, metadata=key_values(args.metadata, "metadata"), **connection(args)
    )
    if args.json:
        print_json(sandboxes)
        return 0
    rows = [["ID", "TEMPLATE", "STATE", "STARTED", "ENDS", "METADATA"]]
    for s in sandboxes:
        rows.append(
            [
                s.sandbox_id,
                s.template,
                s.state,
                _time(s.started_at),
                _time(s.ended_at or s.end_at),
                ",".join(f"{k}={v}" for k, v in sorted(s.metadata.items())),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def info_cmd(args: argparse.Namespace) -> int:
    sbx = Sandbox.connect(args.sandbox_id, **connection(args))
    try:
        info = sbx.get_info()
    finally:
        sbx.close()
    if args.json:
        print_json(info)
        return 0
    for key, value in _describe(info):
        print(f"{key + ':':<12}{value}")
    return 0


def kill_cmd(args: argparse.Namespace) -> int:
    sbx = Sandbox.connect(args.sandbox_id, **connection(args))  # sandbox_not_found if unknown
    try:
        if not sbx.kill():
            raise SandboxNotRunningError(f"sandbox {args.sandbox_id!r} is not running")
    finally:
        sbx.close()
    return 0


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _describe(info: SandboxInfo) -> list[tuple[str, str]]:
    return [
        ("id", info.sandbox_id),
        ("template", info.template),
        ("state", info.state + (f" ({info.reason})" if info.reason else "")),
        ("started", _time(info.started_at)),
        ("ends" if info.state in ("starting", "running") else "ended", _time(info.ended_at or info.end_at)),
        ("cpus", str(info.cpu_count)),
        ("memory", f"{info.memory_mb} MiB"),
        ("disk", f"{info.disk_mb} MiB"),
        ("internet", "yes" if info.internet else "no"),
        ("isolation", info.isolation),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())) or "-"),
    ]

"""``corral template build|list|get|delete|logs``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from corral.cli.common import connection, connection_options, key_values, print_json
from corral.sdk import Template


def add_parser(nouns: Any) -> None:
    conn = connection_options()
    p = nouns.add_parser("template", help="build, list, inspect and delete templates", parents=[conn])
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    build = verbs.add_parser("build", help="build a template from a Dockerfile", parents=[conn])
    build.add_argument("context", nargs="?", default=".", metavar="CONTEXT_DIR", help="build context (default .)")
    build.add_argument("-f", "--file", dest="dockerfile", default=None, help="Dockerfile (default CONTEXT_DIR/Dockerfile)")
    build.add_argument("--name", help="template name (default: the context dir's name)")
    build.add_argument("--tag", default="latest")
    build.add_argument("--build-arg", action="append", metavar="K=V", help="ARG value, repeatable")
    build.add_argument("--start-cmd", help="run in the background when a sandbox starts (overrides CMD)")
    build.add_argument("--ready-cmd", help="create returns once this exits 0")
    build.add_argument("--no-cache", action="store_true", help="run every step again")
    build.add_argument("--json", action="store_true", help="print the build events as JSON lines")
    build.set_defaults(func=build_cmd)

    ls = verbs.add_parser("list", aliases=["ls"], help="list templates", parents=[conn])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_cmd)

    get = verbs.add_parser("get", help="show one template", parents=[conn])
    get.add_argument("ref", metavar="NAME[:TAG]")
    get.set_defaults(func=get_cmd)

    delete = verbs.add_parser("delete", aliases=["rm"], help="delete a template", parents=[conn])
    delete.add_argument("ref", metavar="NAME[:TAG]")
    delete.set_defaults(func=delete_cmd)

    logs = verbs.add_parser("logs", help="print a build's log", parents=[conn])
    logs.add_argument("build_id", metavar="BUILD_ID")
    logs.set_defaults(func=logs_cmd)


class Progress:
    """Step headers with a progress bar, each output line under its step, CACHED or the time taken."""

    def __init__(self, out: Any = sys.stdout) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            self.say(f"building {event['name']}:{event['tag']} ({event['steps']} steps, build {event['build_id']})")
        elif kind == "step":
            done = int(20 * (event["step"] - 1) / max(event["total"], 1))
            bar = "#" * done + "." * (20 - done)
            self.say(f"[{bar}] Step {event['step']}/{event['total']} : {event['instruction']}")
        elif kind == "log":
            self.say(f"  {event['data']}")
        elif kind == "step_end":
            self.say(" ---> CACHED" if event.get("cached") else f" ---> done in {event['seconds']:.2f} s")
        elif kind == "end" and event.get("status") == "succeeded":
            t = event["template"]
            self.say(f"built {t['name']}:{t['tag']} in {time.monotonic() - self.started:.2f} s")

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def build_cmd(args: argparse.Namespace) -> int:
    context = Path(args.context)
    name = args.name or re.sub(r"[^a-z0-9._-]", "-", context.resolve().name.lower()).strip("-._") or "template"
    dockerfile = args.dockerfile or "Dockerfile"
    if args.dockerfile and not Path(args.dockerfile).is_absolute():
        # -f is relative to the current dir, as with docker build
        dockerfile = str(Path(args.dockerfile).resolve())
    on_event: Any = Progress()
    if args.json:
        import json

        def on_event(e: dict[str, Any]) -> None:
            print(json.dumps(e), flush=True)
    Template.build(
        name=name, tag=args.tag, context_dir=context, dockerfile=dockerfile,
        build_args=key_values(args.build_arg, "build-arg"), start_cmd=args.start_cmd, ready_cmd=args.ready_cmd,
        no_cache=args.no_cache, on_event=on_event, **connection(args),
    )  # fmt: skip
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    templates = Template.list(**connection(args))
    if args.json:
        print_json(templates)
        return 0
    rows = [["NAME", "TAG", "KIND", "LAYERS", "BUILD", "CREATED"]]
    for t in templates:
        created = t.created_at.strftime("%Y-%m-%d %H:%M:%S") if t.created_at else "-"
        rows.append([t.name, t.tag, t.kind, str(t.layers), t.build_id or "-", created])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def get_cmd(args: argparse.Namespace) -> int:
    print_json(Template.get(args.ref, **connection(args)))
    return 0


def delete_cmd(args: argparse.Namespace) -> int:
    Template.delete(args.ref, **connection(args))
    return 0


def logs_cmd(args: argparse.Namespace) -> int:
    progress = Progress()
    for event in Template.build_logs(args.build_id, **connection(args)):
        progress(event)
        if event.get("type") == "end" and event.get("error"):
            print(f"error: {event['error']['code']}: {event['error']['message']}", file=sys.stderr)
    return 0

"""``corral backends``: the server's isolation backends, whether each works on its host and why not."""

from __future__ import annotations

import argparse
from typing import Any

from corral.cli.common import connection, connection_options, print_json
from corral.sdk import Sandbox


def add_parser(nouns: Any) -> None:
    p = nouns.add_parser(
        "backends", help="list the isolation backends and whether they work on the server's host",
        parents=[connection_options()],
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    backends = Sandbox.backends(**connection(args))
    if args.json:
        print_json(backends)
        return 0
    for b in backends:
        marks = ", ".join(m for m, on in (("default", b.default), ("auto", b.auto)) if on)
        state = "works" if b.works else "does not work"
        note = f": {b.reason}" if b.reason else ""
        print(f"{b.name:10} {state}{f' [{marks}]' if marks else ''}{note}")
    return 0

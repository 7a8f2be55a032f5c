"""``corral serve``: run the server in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(nouns: Any) -> None:
    p = nouns.add_parser("serve", help="run the corral server", description="Run the corral server.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 49982; 0 picks a free one)")
    p.add_argument("--data-dir", help="templates, SQLite store and API key (default /var/lib/corral)")
    p.add_argument(
        "--isolation",
        choices=("auto", "namespace", "gvisor", "microvm"),
        help="default isolation backend (auto: the strongest that works here)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {
        name: getattr(args, name)
        for name in ("host", "port", "data_dir", "isolation")
        if getattr(args, name) is not None
    }
    # lazy: the server side (and its Linux-only pieces) loads only for this subcommand
    from corral.server.app import serve

    serve(overrides)
    return 0

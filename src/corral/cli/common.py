"""What every subcommand shares: connection options, ``K=V`` parsing, output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from corral.sdk.models import to_jsonable


def connection_options() -> argparse.ArgumentParser:
    """``--api-url``/``--api-key``, accepted before or after the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--api-url",
        default=argparse.SUPPRESS,
        help="corral server URL (default: $CORRAL_API_URL or http://127.0.0.1:49982)",
    )
    parent.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (default: $CORRAL_API_KEY)")
    return parent


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """SDK keyword arguments from the connection options (unset ones fall back to the env)."""
    return {"api_url": getattr(args, "api_url", None), "api_key": getattr(args, "api_key", None)}


def key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` as a dict; a malformed item is a usage error (exit 2)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            usage_error(f"{what} {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def usage_error(message: str) -> None:
    print(f"corral: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def print_json(obj: Any) -> None:
    print(json.dumps(to_jsonable(obj), indent=2, sort_keys=True))

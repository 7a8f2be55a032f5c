"""``corral exec ID -- CMD...``: run a command in a sandbox, streaming its output."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from corral.cli.common import connection, connection_options, key_values, usage_error
from corral.errors import CommandExitError
from corral.sdk import CommandTimeoutError, Sandbox

TIMEOUT_EXIT_CODE = 124  # as timeout(1)


def add_parser(nouns: Any) -> None:
    p = nouns.add_parser(
        "exec",
        help="run a command in a sandbox",
        description="Run CMD in the sandbox with a shell; exit with its exit code (124 on timeout). "
        "Several words are quoted and joined (shlex.join); a single word is passed to the shell as is, "
        "so `corral exec ID -- 'echo a | wc -c'` runs a pipeline.",
        parents=[connection_options()],
    )
    p.add_argument("sandbox_id", metavar="ID")
    p.add_argument("--user", default="user", help="user to run as (default: user)")
    p.add_argument("--cwd", help="working directory")
    p.add_argument("--env", action="append", metavar="K=V", help="environment variable, repeatable")
    p.add_argument("--timeout", type=float, default=0, help="seconds before it is killed (default: none)")
    p.add_argument(
        "cmd", nargs="*", metavar="CMD", help="the command; put it after -- (corral exec ID -- ls -l)"
    )
    p.set_defaults(func=run)


def _write(stream: Any) -> Any:
    def write(data: str) -> None:
        stream.write(data)
        stream.flush()

    return write


def run(args: argparse.Namespace) -> int:
    words = args.cmd
    if not words:
        usage_error("exec: no command given (corral exec ID -- CMD...)")
    cmd = words[0] if len(words) == 1 else shlex.join(words)
    sbx = Sandbox.connect(args.sandbox_id, **connection(args))
    try:
        result = sbx.commands.run(
            cmd,
            envs=key_values(args.env, "env"),
            cwd=args.cwd,
            user=args.user,
            timeout=args.timeout,
            on_stdout=_write(sys.stdout),
            on_stderr=_write(sys.stderr),
        )
        return result.exit_code
    except CommandExitError as err:
        return _exit_status(err.exit_code)
    except CommandTimeoutError:
        print(f"corral: command timed out after {args.timeout:g} s", file=sys.stderr)
        return TIMEOUT_EXIT_CODE
    finally:
        sbx.close()


def _exit_status(code: int) -> int:
    """A shell-style exit status: killed by signal N gives 128+N."""
    if code < 0:
        return 128 + (-code)
    return code if code < 256 else 1

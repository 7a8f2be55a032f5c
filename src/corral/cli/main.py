"""``corral``: the entry point; each noun's module adds its own subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corral import __version__
from corral.cli import backends, code, cp, exec, sandbox, serve, shell, template
from corral.cli.common import connection_options
from corral.errors import CorralError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Self-hosted sandboxes for AI-generated code.",
        parents=[connection_options()],
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    nouns = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (serve, sandbox, backends, exec, code, cp, shell, template):
        module.add_parser(nouns)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is a command's words (`corral exec ID -- CMD...`): split it
    # off here, because argparse's own `--` handling does not reach into subcommands.
    tail: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if tail is not None:
        if not hasattr(args, "cmd"):
            parser.error("`--` is only for `corral exec ID -- CMD...`")
        args.cmd = [*args.cmd, *tail]
    try:
        code: int = args.func(args)
    except CorralError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())

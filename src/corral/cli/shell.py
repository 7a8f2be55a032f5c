"""``corral shell ID``: an interactive terminal in a sandbox, in the user's own terminal."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from typing import Any

from corral.cli.common import connection, connection_options
from corral.cli.exec import _exit_status
from corral.errors import CorralError
from corral.sdk import PtyHandle, Sandbox


def add_parser(nouns: Any) -> None:
    p = nouns.add_parser(
        "shell",
        help="open an interactive terminal in a sandbox",
        description="Open a terminal in the sandbox (an interactive login bash, or CMD) the size of this one; "
        "keys go through as typed (Ctrl-C included), window resizes follow. Exits with the shell's exit code.",
        parents=[connection_options()],
    )
    p.add_argument("sandbox_id", metavar="ID")
    p.add_argument("--user", default="user", help="user to run as (default: user)")
    p.add_argument("--cwd", help="working directory")
    p.add_argument("--cmd", dest="shell_cmd", metavar="CMD", help="a command line to run on the terminal instead of a login shell")
    p.set_defaults(func=run)


def _size(*fds: int) -> tuple[int, int]:
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns > 0 and size.lines > 0:
                return size.columns, size.lines
    return 80, 24


def run(args: argparse.Namespace) -> int:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout.flush()
    cols, rows = _size(stdout, stdin)
    sbx = Sandbox.connect(args.sandbox_id, **connection(args))
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    wake_r, wake_w = os.pipe()
    old_winch = signal.getsignal(signal.SIGWINCH)
    handle: PtyHandle | None = None
    try:
        handle = sbx.pty.create(cols=cols, rows=rows, cwd=args.cwd, user=args.user, cmd=args.shell_cmd)
        # Resizes: the handler only wakes the input thread, which makes the call (an HTTP request
        # from a signal handler could re-enter the client the main thread is reading with).
        signal.signal(signal.SIGWINCH, lambda *_: _poke(wake_w))
        if saved is not None:
            tty.setraw(stdin, termios.TCSANOW)
        forward = threading.Thread(
            target=_forward_input, args=(handle, stdin, wake_r, (stdout, stdin), (cols, rows)), daemon=True
        )
        forward.start()
        out = sys.stdout.buffer
        for chunk in handle:
            out.write(chunk.encode())
            out.flush()
        result = handle.wait()
        return _exit_status(result.exit_code)
    finally:
        signal.signal(signal.SIGWINCH, old_winch)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        _poke(wake_w)
        if handle is not None and handle.exit_code is None:
            with contextlib.suppress(Exception):  # interrupted: do not leave the terminal behind
                handle.kill()
        sbx.close()
        os.close(wake_w)  # wake_r is the input thread's (a daemon, maybe still in select)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"w")


def _forward_input(
    handle: PtyHandle, stdin: int, wake: int, size_fds: tuple[int, int], size: tuple[int, int]
) -> None:
    """Keystrokes to the terminal as they come, and the window size when it changes. Ends when
    stdin does (then sends Ctrl-D, as a terminal would at end of input) or the terminal does."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while handle.exit_code is None:
            ready, _, _ = select.select([stdin, wake], [], [])
            if wake in ready:
                os.read(wake, 512)
                if handle.exit_code is not None:
                    return
                new = _size(*size_fds)
                if new != size:
                    size = new
                    handle.resize(*size)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:
                    handle.send_stdin("\x04")
                    return
                text = decoder.decode(data)
                if text:
                    handle.send_stdin(text)
    except (CorralError, OSError, ValueError):
        return  # the terminal is gone (or so is this process's stdin)
    finally:
        with contextlib.suppress(OSError):
            os.close(wake)

"""Processes on a pseudo-terminal (``exec`` with ``pty``): spawning on a new pty, reading its
master (the output is streamed as stdout), input, window size (``resize``).

Named ``terminal`` rather than ``pty``: run as a directory, this package is on ``sys.path``
and would shadow the standard library's ``pty``.
"""

import os
import time

from .proc import Proc
from .wire import K_STDOUT, AgentError, invalid, os_error

MAX_SIZE = 1000  # columns and rows are 1..MAX_SIZE
WRITE_STALL = 5.0  # seconds a write may wait for the terminal to take input before failing


def parse_size(req, key="pty"):
    """(cols, rows) from ``req[key]`` = {"cols", "rows"} (or from req itself when key is None)."""
    spec = req.get(key) if key else req
    if not isinstance(spec, dict):
        raise invalid(f"field {key} must be an object {{cols, rows}}")
    out = []
    for name in ("cols", "rows"):
        v = spec.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
            raise invalid(f"field {name} must be an integer between 1 and {MAX_SIZE}")
        out.append(v)
    return out[0], out[1]


def _set_size(fd, cols, rows):
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def spawn(argv, cols, rows, info, timeout, **popen_kw):
    """Start ``argv`` as the session leader of a new terminal of ``cols`` x ``rows``."""
    import fcntl
    import functools
    import subprocess
    import termios

    master, slave = os.openpty()
    try:
        os.set_blocking(master, False)
        _set_size(master, cols, rows)
        try:
            popen = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                bufsize=0,
                start_new_session=True,
                # After setsid (and the user switch): make the terminal the controlling one.
                preexec_fn=functools.partial(fcntl.ioctl, 0, termios.TIOCSCTTY, 0),
                **popen_kw,
            )
        except OSError as e:
            raise os_error(e) from None
        except (ValueError, subprocess.SubprocessError) as e:
            raise invalid(f"cannot start {argv[0]}: {e}") from None
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the child has it: the master reads EIO once every copy is closed
    try:
        return PtyProc(popen, master, info, timeout)
    except BaseException:
        os.close(master)
        os.killpg(popen.pid, 9)
        popen.wait()
        raise


class PtyProc(Proc):
    """A :class:`Proc` whose output comes from a terminal's master side (all of it as stdout)."""

    def __init__(self, popen, master, info, timeout):
        super().__init__(popen, info, timeout)
        self.master = master  # None once closed (under stdin_lock)

    def _outputs(self):
        return {self.master: K_STDOUT}

    def _close_outputs(self):
        with self.stdin_lock:
            fd, self.master = self.master, None
            try:
                os.close(fd)
            except OSError:
                pass

    def write(self, raw):
        """Type ``raw`` into the terminal (call with stdin_lock held)."""
        import select

        fd = self.master
        if fd is None or self.exited.is_set():
            raise AgentError("process_not_found", f"the terminal of process {self.pid} is closed")
        view = memoryview(raw)
        stalled_since = None
        while view:
            try:
                view = view[os.write(fd, view) :]
                stalled_since = None
                continue
            except BlockingIOError:
                pass
            except OSError as e:
                raise AgentError("process_not_found", f"the terminal of process {self.pid} is closed: {e}") from None
            now = time.monotonic()
            stalled_since = stalled_since or now
            if self.exited.is_set() or now - stalled_since > WRITE_STALL:
                raise invalid(f"the terminal of process {self.pid} does not take input")
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            poller.poll(100)

    def resize(self, cols, rows):
        with self.stdin_lock:
            if self.master is None:
                raise AgentError("process_not_found", f"the terminal of process {self.pid} is closed")
            _set_size(self.master, cols, rows)  # the kernel sends SIGWINCH to the foreground group

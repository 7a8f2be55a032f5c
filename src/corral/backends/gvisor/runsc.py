"""The runsc command line: starting containers, listing and forgetting them, reading why one died.

Every container of a backend lives in one runsc state dir (``--root``); its logs go to the
sandbox's own disk (``<disk>/log``), so a sandbox that floods them fills only its own quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..namespace import bwrap, overlay

EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PLATFORM = "ptrace"  # kvm hangs on hosts that are themselves VMs without nested paging (design.md)
LOG_DIR = "log"  # <disk>/log: runsc's logs (per command), the container's console, panics
TIMEOUT = 30.0

# What a runsc that died says about why, most telling first (its logs are long).
_FAILURE_PATTERNS = (
    (re.compile(r"failed to create new OS thread|pthread_create failed|initializing first thread: resource "
                r"temporarily unavailable", re.I),
     "runsc could not create a thread: the sandbox hit its pids limit"),
    (re.compile(r"^(panic: .*|fatal error: .*)$", re.M), None),
    (re.compile(r"^W\S* .*(?:FATAL|error|failed).*$", re.M | re.I), None),
)  # fmt: skip


class RunscError(RuntimeError):
    pass


def binary() -> str | None:
    return shutil.which("runsc", path=EXEC_PATH)


def base_argv(root: Path, log_dir: Path | None = None) -> list[str]:
    exe = binary() or "runsc"
    argv = [exe, "--root", str(root), f"--platform={PLATFORM}", "--network=sandbox"]
    if log_dir is not None:
        # One log file per runsc command (run, boot, gofer, delete...), and Go's panics.
        argv += [f"--debug-log={log_dir}/%COMMAND%.log", f"--panic-log={log_dir}/panic.log"]
    return argv


def run_command(
    argv: list[str], timeout: float, stdout: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=stdout if stdout is not None else subprocess.PIPE,
        env={"PATH": EXEC_PATH, "LC_ALL": "C"},
        timeout=timeout,
        close_fds=True,
    )


# The shell that becomes runsc. Forked early, it joins the sandbox's cgroups (each join waits
# for an RCU grace period, 5-15 ms here) while the caller makes the netns and the root, then waits
# for "go" on its stdin: the sentry, the gofer and the ptrace stubs runsc forks are in the
# sandbox's cgroups from their first instruction. runsc finds them made (cgroupsPath), sizes the
# sandbox's memory from their limit and makes only the controllers corral does not use.
#
# runsc 20221219 refuses a network namespace in which /proc/sys/net/core/rmem_default exists,
# taking it for the host's; recent kernels show that file in every netns. So runsc runs in a mount
# namespace of its own where /proc/sys/net is an empty tmpfs (a mount on /proc/sys/net/core would
# not hold once runsc joins the sandbox's netns). The gofer mounts a new proc in its user
# namespace, which the kernel allows only while some proc mount is fully visible: a second,
# uncovered proc mount (on the runsc root's proc/ dir, in that mount namespace only) is one.
_HIDE = (
    'mount -t proc corral-proc "$CORRAL_PROC" || exit 124\n'
    "mount -t tmpfs -o size=4k,mode=0555 corral-hide /proc/sys/net || exit 124\n"
    'exec "$@"\n'
)
# The mount namespace is made after "go": made earlier, it would miss the netns mount that the
# caller makes meanwhile under /run/netns.
_LAUNCH = (
    'for f in $CORRAL_CGROUPS; do echo $$ > "$f" || exit 126; done\n'
    'read go; [ "$go" = go ] || exit 125\n'
    'exec 2>>"$CORRAL_CONSOLE" </dev/null\n'
    'exec unshare --mount --propagation private -- /bin/sh -c "$CORRAL_HIDE" sh "$@"\n'
)


class Launcher:
    """``runsc run --detach`` of a bundle, forked early into the sandbox's cgroups (see _LAUNCH).

    The container's stderr (the agent's, before its own log takes over) goes to
    ``<log_dir>/console.log``; its stdout is a pipe whose read end is ``ready_fd``: runsc hands
    its own stdio to the container's process, so the agent (``--ready-fd 1``) says "ready" on it
    the moment it listens, and the caller reads that instead of polling the agent's port.
    """

    def __init__(
        self, root: Path, bundle: Path, container_id: str, log_dir: Path, cgroup_procs: list[str]
    ) -> None:
        self.root, self.bundle, self.log_dir = root, bundle, log_dir
        self.pid_file = bundle / "runsc.pid"
        argv = [*base_argv(root, log_dir), "run", "--detach"]
        argv += ["--bundle", str(bundle), "--pid-file", str(self.pid_file), container_id]
        self.argv = ["/bin/sh", "-c", _LAUNCH, "sh", *argv]
        self.env = {
            "PATH": EXEC_PATH, "LC_ALL": "C", "CORRAL_CGROUPS": " ".join(cgroup_procs),
            "CORRAL_CONSOLE": str(log_dir / "console.log"), "CORRAL_PROC": str(root / "proc"), "CORRAL_HIDE": _HIDE,
        }  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_fd: int | None = None  # the read end of the container's stdout
        self._out = b""

    async def spawn(self) -> None:
        (self.root / "proc").mkdir(mode=0o500, exist_ok=True)
        r, w = os.pipe2(os.O_CLOEXEC)
        self.ready_fd = r
        try:
            # SECURITY: root's process until it execs runsc (which drops what it does not need).
            self.proc = await asyncio.to_thread(
                subprocess.Popen, self.argv, stdin=subprocess.PIPE, stdout=w,
                stderr=subprocess.DEVNULL, env=self.env, close_fds=True, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(w)  # the sandbox holds the write end: EOF once it is gone

    async def wait_ready(self, timeout: float) -> bool | None:
        """True once the container's process wrote a line "ready"; False on EOF (the sandbox's
        stdout closed first); None if neither came within ``timeout`` seconds."""
        fd = self.ready_fd
        if fd is None:
            return False
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while b"ready\n" not in self._out:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                if not await bwrap.wait_readable(fd, max(0.0, deadline - loop.time())):
                    return None
                continue
            if not chunk:
                return False
            self._out = self._out[-64:] + chunk
        return True

    def close_ready(self) -> None:
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    async def run(self) -> int:
        """Let runsc go; return the sandbox (sentry) process's pid once the container runs."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            # proc.wait() blocks in waitpid; with a timeout it would poll every 50 ms instead.
            code = await asyncio.wait_for(asyncio.shield(asyncio.to_thread(proc.wait)), TIMEOUT)
        except TimeoutError:
            proc.kill()
            raise RunscError(f"runsc run did not return within {TIMEOUT:.0f} s") from None
        if code in (124, 125, 126):
            raise RunscError(f"runsc's launcher failed ({code}): cgroups or mounts")
        if code != 0:
            raise RunscError(f"runsc run failed ({code}): {failure_reason(self.log_dir) or 'no log output'}")
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError) as e:
            raise RunscError(f"runsc run left no pid file: {e}") from None

    def abort(self) -> None:
        """Make a launcher that was never let go exit (idempotent)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # read gets EOF: exit 125
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def state_files(root: Path, container_id: str) -> list[Path]:
    """runsc's record of a container: ``<id>_sandbox:<id>.state`` and its ``.lock``."""
    return [root / f"{container_id}_sandbox:{container_id}.{ext}" for ext in ("state", "lock")]


def forget(root: Path, container_id: str) -> None:
    """Drop runsc's record of a container whose processes are all gone (what ``runsc delete``
    does then, minus its second of waiting on a sandbox that is already dead)."""
    for path in state_files(root, container_id):
        path.unlink(missing_ok=True)


def list_ids(root: Path) -> set[str]:
    """Containers that have state in the runsc root (state files are ``<id>_sandbox:<id>.state``)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return set()
    ids = set()
    for name in names:
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_-]*)_sandbox:([A-Za-z0-9][A-Za-z0-9_-]*)\.state$", name)
        if m:
            ids.add(m.group(2))
    return ids


def _head(directory: Path, name: str, limit: int) -> str:
    """The first bytes of a log runsc wrote (root-owned, outside the sandbox's reach)."""
    try:
        with open(directory / name, "rb") as f:
            return f.read(limit).decode(errors="replace")
    except OSError:
        return ""


def failure_reason(log_dir: Path) -> str:
    """The most telling line of runsc's logs (a panic, a fatal error, a warning), or ""."""
    # A Go panic starts its log (the goroutine dump that follows is long); then the warnings and
    # errors of each command, most recent last.
    panic = _head(log_dir, "panic.log", 4096)
    logs = [
        overlay.read_tail(log_dir, name, 16384)
        for name in ("boot.log", "gofer.log", "run.log", "console.log")
    ]
    joined = "\n".join([panic, *(t for t in logs if t)])
    for pattern, meaning in _FAILURE_PATTERNS:
        m = pattern.search(joined)
        if m:
            start = joined.rfind("\n", 0, m.start()) + 1
            end = joined.find("\n", m.end())
            line = joined[start : end if end >= 0 else len(joined)].strip()[:300]
            return f"{meaning} ({line})" if meaning else line
    return ""

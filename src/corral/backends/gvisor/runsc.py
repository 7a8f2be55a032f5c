"""The runsc command line: starting, deleting and listing containers, and reading why one died.

Every container of a backend lives in one runsc state dir (``--root``); its logs go to the
sandbox's own disk (``<disk>/log``), so a sandbox that floods them fills only its own quota.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..namespace import overlay

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


# runsc 20221219 refuses a network namespace in which /proc/sys/net/core/rmem_default exists,
# taking it for the host's; recent kernels show that file in every netns. So runsc runs in a
# mount namespace of its own where /proc/sys/net is an empty tmpfs (a mount on /proc/sys/net/core
# would not hold once runsc joins the sandbox's netns). The gofer mounts a new proc in its user
# namespace, which the kernel allows only while some proc mount is fully visible: a second,
# uncovered proc mount (on the runsc root's proc/ dir, in that mount namespace only) is one.
def hide_net_sysctls(proc_dir: Path) -> list[str]:
    script = (
        f"mount -t proc corral-proc {proc_dir} && "
        'mount -t tmpfs -o size=4k,mode=0555 corral-hide /proc/sys/net && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"]


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


def _run(argv: list[str], timeout: float, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=stdout if stdout is not None else subprocess.PIPE,
        env={"PATH": EXEC_PATH, "LC_ALL": "C"},
        timeout=timeout,
        close_fds=True,
    )


async def run_detached(root: Path, bundle: Path, container_id: str, log_dir: Path) -> int:
    """``runsc run --detach``: create and start the container; return the sandbox process's pid.

    The container's stdout and stderr (the agent's, before its own log takes over) go to
    ``<log_dir>/console.log``.
    """
    pid_file = bundle / "runsc.pid"
    (root / "proc").mkdir(mode=0o500, exist_ok=True)
    argv = [
        *hide_net_sysctls(root / "proc"), *base_argv(root, log_dir),
        "run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file), container_id,
    ]  # fmt: skip
    fd = os.open(log_dir / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = await asyncio.to_thread(_run, argv, TIMEOUT, fd)
    except subprocess.TimeoutExpired:
        raise RunscError(f"runsc run did not return within {TIMEOUT:.0f} s") from None
    finally:
        os.close(fd)
    if proc.returncode != 0:
        raise RunscError(
            f"runsc run failed ({proc.returncode}): {failure_reason(log_dir) or 'no log output'}"
        )
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError) as e:
        raise RunscError(f"runsc run left no pid file: {e}") from None


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


def state(root: Path, container_id: str) -> dict[str, Any] | None:
    proc = _run([*base_argv(root), "state", container_id], 10)
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


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

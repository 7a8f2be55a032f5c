"""The bwrap command line of a sandbox and the spawn that puts it in its cgroups and netns."""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from .userns import HOST_UID_BASE

CLONE_NEWNET = 0x40000000

# SECURITY: a docker-like capability set for root inside (all within the sandbox's user
# namespace). Notably absent: CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE,
# CAP_SYS_MODULE, CAP_MKNOD, CAP_SYS_RESOURCE.
CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
)  # fmt: skip

CA_BUNDLE_INSIDE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's system bundle
AGENT_PATH_INSIDE = "/usr/local/lib/corral/agent"  # the agent package's directory (or one file)
RUN_DIR_INSIDE = "/run/corral"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXEC_PATH = "/usr/local/bin:/usr/bin:/bin"  # where the host's bwrap is looked up

# The agent is started through this prelude, run by the python3 that then runs the agent (no
# extra exec). It moves the ready pipe to fd 3 and closes every other inherited fd (bwrap
# leaves its --userns fd open in the process it execs). It reads the agent's modules, compiled
# once on the host (compile_agent), from an inherited memfd (compiling them costs ~14 ms per
# start), serves them to imports of the package "agent" and runs its __main__. When the
# sandbox's Python has another bytecode version, it runs the bind-mounted directory from
# source instead, like ``python3 -I -S /usr/local/lib/corral/agent`` would.
_PRELUDE = """\
import os,sys,marshal
r,c=int(sys.argv[1]),int(sys.argv[2])
d=b''
if c>=0:
    while 1:
        b=os.read(c,1<<20)
        if not b:break
        d+=b
    os.close(c)
if r!=3:
    os.dup2(r,3);os.close(r)
os.closerange(4,65536)
p=sys.argv[3];sys.argv=sys.argv[3:]
m=None
try:
    import _frozen_importlib_external as f
    if d[:4]==f.MAGIC_NUMBER:m=marshal.loads(d[16:])
except Exception:
    m=None
if m is None:
    q=p+'/__main__.py' if os.path.isdir(p) else p
    sys.path.insert(0,os.path.dirname(q))
    exec(compile(open(q,'rb').read(),q,'exec'),{'__name__':'__main__','__file__':q,'__builtins__':__builtins__})
else:
    import _frozen_importlib as i
    class L:
        def find_spec(n,*a):
            if n.partition('.')[0]=='agent':return i.ModuleSpec(n,L,is_package=n=='agent')
        def create_module(s):return None
        def exec_module(o):exec(m[o.__name__.partition('.')[2] or '__init__'],o.__dict__)
    sys.meta_path.insert(0,L)
    exec(m['__main__'],{'__name__':'__main__','__package__':'agent','__builtins__':__builtins__})
"""


def agent_argv(ready_fd: int, code_fd: int = -1) -> list[str]:
    return [
        "/usr/bin/python3", "-I", "-S", "-c", _PRELUDE, str(ready_fd), str(code_fd), AGENT_PATH_INSIDE,
        "--socket", f"{RUN_DIR_INSIDE}/agent.sock", "--ready-fd", "3", "--log", f"{RUN_DIR_INSIDE}/agent.log",
    ]  # fmt: skip


def _agent_files(path: Path) -> dict[str, Path]:
    """module name -> source: the package's modules, or one script run as __main__."""
    if path.is_dir():
        return {f.stem: f for f in sorted(path.glob("*.py"))}
    return {"__main__": path}


def agent_mtime(path: Path) -> float:
    """Changes whenever compile_agent's result may (a module edited, added or removed)."""
    return max(p.stat().st_mtime for p in (path, *_agent_files(path).values()))


def compile_agent(path: Path) -> bytes:
    """The agent (a package directory, or one script) as the prelude's bundle: magic number +
    12 bytes + marshal.dumps({module name: code object}), module names relative to the package."""
    import importlib.util
    import marshal

    codes = {}
    for name, f in _agent_files(path).items():
        inside = f"{AGENT_PATH_INSIDE}/{f.name}" if path.is_dir() else AGENT_PATH_INSIDE
        codes[name] = compile(f.read_bytes(), inside, "exec")
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(codes)


def memfd_with(name: str, data: bytes) -> int:
    """A fresh memfd holding data, positioned at 0."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class BwrapConfig:
    sandbox_id: str
    root: Path  # the overlay mount
    agent_dir: Path  # host dir bound at /run/corral
    agent_path: Path  # host agent package directory (or one script)
    resolv_conf: Path
    hosts: Path
    ca_bundle: Path | None = None  # the host's CA certificates, bound over the template's


def argv(cfg: BwrapConfig, userns_fd: int, seccomp_fd: int, ready_fd: int, code_fd: int = -1) -> list[str]:
    a = [
        "bwrap",
        # SECURITY: join the shared user namespace: root inside is host uid 100000.
        "--userns", str(userns_fd), "--uid", "0", "--gid", "0",
        "--bind", str(cfg.root), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--bind", str(cfg.agent_dir), RUN_DIR_INSIDE,
        "--ro-bind", str(cfg.agent_path), AGENT_PATH_INSIDE,
        "--ro-bind", str(cfg.resolv_conf), "/etc/resolv.conf",
        "--ro-bind", str(cfg.hosts), "/etc/hosts",
        *(["--ro-bind", str(cfg.ca_bundle), CA_BUNDLE_INSIDE] if cfg.ca_bundle else []),
        "--hostname", cfg.sandbox_id,
        # SECURITY: own pid, ipc, uts and cgroup namespaces (the netns is joined before exec).
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        # SECURITY: no controlling terminal shared with the host (TIOCSTI).
        "--new-session",
    ]  # fmt: skip
    for cap in CAPS:
        a += ["--cap-add", cap]
    a += [
        # SECURITY: syscall filter (see seccomp.py); bwrap also sets no_new_privs.
        "--seccomp", str(seccomp_fd),
        "--chdir", "/",
        "--clearenv",
        "--setenv", "PATH", PATH,
        "--setenv", "HOME", "/root",
        "--setenv", "LANG", "C.UTF-8",
        "--",
        *agent_argv(ready_fd, code_fd),
    ]  # fmt: skip
    return a


_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_SYSCTLS = (
    # Inside its own netns, root may bind low ports and anyone may use ICMP echo sockets (the
    # netns belongs to the host's user namespace, so the sandbox's capabilities do not count).
    (b"/proc/sys/net/ipv4/ip_unprivileged_port_start", b"0"),
    (b"/proc/sys/net/ipv4/ping_group_range", b"0 2147483647"),
)


class SpawnError(RuntimeError):
    pass


def _close_all_except(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


class GatedChild:
    """A forked child that has joined its cgroups and waits for ``go()`` to exec bwrap.

    Joining a cgroup waits for an RCU grace period (5-15 ms here), so the child does that
    while the parent prepares the mounts and the network. The child first closes every fd it
    does not need: it must not hold the server's pipes and sockets open while it waits.
    """

    def __init__(
        self,
        args: list[str],
        *,
        cgroup_procs: list[str],
        netns: Path,
        pass_fds: tuple[int, ...],
        log_path: Path,
        gate_timeout: float = 30.0,
    ) -> None:
        executable = shutil.which(args[0], path=EXEC_PATH)
        if executable is None:
            raise SpawnError(f"{args[0]} not found")
        argv_b = [os.fsencode(a) for a in args]
        env = {b"PATH": b"/usr/bin:/bin"}
        netns_b, log_b = os.fsencode(netns), os.fsencode(log_path)
        cg_fds = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cgroup_procs]
        gate_r, self._gate_w = os.pipe2(os.O_CLOEXEC)
        self._err_r, err_w = os.pipe2(os.O_CLOEXEC)
        keep = {0, 1, 2, *cg_fds, gate_r, err_w, *pass_fds}
        try:
            self.pid = os.fork()
            if self.pid == 0:  # the child: raw syscalls only, then exec or _exit
                try:
                    _close_all_except(keep)
                    null = os.open(b"/dev/null", os.O_RDWR)
                    for std in (0, 1, 2):
                        os.dup2(null, std)
                    os.close(null)
                    # SECURITY: join the cgroups first, so every process of the sandbox (bwrap
                    # included) is limited and killable from its very first fork.
                    for fd in cg_fds:
                        os.write(fd, b"0")  # "0" = the writing process
                        os.close(fd)
                    ready, _, _ = select.select([gate_r], [], [], gate_timeout)
                    if not ready or os.read(gate_r, 1) != b"1":
                        os._exit(125)
                    os.setsid()
                    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; bwrap must not
                    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_SETMASK, [])
                    # bwrap's own errors go to a file on the sandbox's disk tmpfs, so whatever
                    # the sandbox writes to its stdout/stderr counts against its quota.
                    log_fd = os.open(log_b, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                    os.dup2(log_fd, 1)
                    os.dup2(log_fd, 2)
                    os.close(log_fd)
                    # SECURITY: the sandbox's own network namespace (needs host root: joined
                    # before dropping it).
                    ns_fd = os.open(netns_b, os.O_RDONLY | os.O_CLOEXEC)
                    if _setns(ns_fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns(netns)")
                    os.close(ns_fd)
                    for path, value in _SYSCTLS:
                        fd = os.open(path, os.O_WRONLY)
                        os.write(fd, value)
                        os.close(fd)
                    # SECURITY: drop every host privilege: bwrap runs as the unprivileged owner
                    # of the sandbox user namespace, with no supplementary groups.
                    os.setgroups([])
                    os.setgid(HOST_UID_BASE)
                    os.setuid(HOST_UID_BASE)
                    for fd in pass_fds:
                        os.set_inheritable(fd, True)
                    os.chdir("/")
                    os.execve(executable, argv_b, env)
                except BaseException as e:
                    try:
                        os.write(err_w, f"{type(e).__name__}: {e}".encode(errors="replace")[:1000])
                    finally:
                        os._exit(127)
        finally:
            if self.pid != 0:
                os.close(gate_r)
                os.close(err_w)
                for fd in cg_fds:
                    os.close(fd)

    def go(self, ok: bool = True) -> None:
        """Let the child exec bwrap (ok) or make it exit (not ok)."""
        if self._gate_w >= 0:
            try:
                os.write(self._gate_w, b"1" if ok else b"0")
            finally:
                os.close(self._gate_w)
                self._gate_w = -1

    async def wait_exec(self) -> None:
        """Return once bwrap is exec'd; raise SpawnError with the child's reason if it was not."""
        fd, self._err_r = self._err_r, -1
        try:
            data = await read_fd(fd)
        finally:
            os.close(fd)
        if data:
            raise SpawnError(data.decode(errors="replace"))

    def close(self) -> None:
        self.go(False)
        if self._err_r >= 0:
            os.close(self._err_r)
            self._err_r = -1


async def read_fd(fd: int, *, until: bytes = b"", timeout: float | None = None) -> bytes | None:
    """Read a pipe without blocking the loop: to EOF, or until the data ends with ``until``.

    None when ``timeout`` seconds pass first; what was read so far when EOF comes early.
    """
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    data = b""
    while not (until and data.endswith(until)):
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            if not await wait_readable(fd, None if deadline is None else max(0.0, deadline - loop.time())):
                return None
            continue
        if not chunk:
            break
        data += chunk
    return data


async def wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait until a non-blocking fd has data (or EOF); False if ``timeout`` seconds pass first."""
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    loop.add_reader(fd, ev.set)
    try:
        await asyncio.wait_for(ev.wait(), timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True

"""The OCI runtime spec (config.json) of a gVisor sandbox, and the init that runs the agent in it.

Pure functions of the sandbox's settings: unit-tested without runsc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import Limits
from ..namespace import cgroups
from ..namespace.bwrap import AGENT_PATH_INSIDE, CAPS, PATH, RUN_DIR_INSIDE
from ..namespace.userns import HOST_UID_BASE, ID_RANGE

BUNDLE_INSIDE = "/usr/local/lib/corral/agent.bundle"  # the agent compiled on the host (optional)
SHIM_INSIDE = "/usr/local/lib/corral/gvisor-compat.so"  # see compat.py
# runsc's Go runtime threads, its gofer and the ptrace platform's stub threads count in the host
# pids cgroup next to the sandbox's own tasks (an idle sandbox: ~40).
PIDS_OVERHEAD = 256

# pid 1 of the container. It forks: the child runs the agent (from the host-compiled bundle when
# the sandbox's Python has the host's bytecode version, else from the bind-mounted sources); the
# parent stays as init, reaps every orphan (a process whose parent exited is re-parented to it)
# and exits with the agent, which ends the sandbox. SIGTERM/SIGINT/SIGHUP go on to the agent.
INIT = """\
import os,sys,signal
a=sys.argv[1:]
pid=os.fork()
if pid:
    for s in (signal.SIGTERM,signal.SIGINT,signal.SIGHUP):signal.signal(s,lambda n,f:os.kill(pid,n))
    while 1:
        try:p,st=os.wait()
        except InterruptedError:continue
        except ChildProcessError:os._exit(0)
        if p==pid:os._exit(os.waitstatus_to_exitcode(st)&255)
os.setsid()
for s in (signal.SIGTERM,signal.SIGINT,signal.SIGHUP):signal.signal(s,signal.SIG_DFL)
b,p=a[0],a[1];sys.argv=a[1:]
m=None
try:
    import marshal,_frozen_importlib_external as f
    d=open(b,'rb').read()
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


@dataclass(frozen=True)
class BundleConfig:
    sandbox_id: str
    root: Path  # the overlay mount (the sandbox's /)
    netns: Path  # /run/netns/corral-<id>, made before runsc starts
    agent_dir: Path  # host dir bound at /run/corral (the agent's log)
    agent_path: Path  # the agent package on the host
    address: str  # the sandbox's IPv4 address (the agent listens there)
    host_address: str  # the host end of its veth (the one peer the agent accepts)
    port: int
    resolv_conf: Path
    hosts: Path
    limits: Limits
    cgroup_version: int
    agent_bundle: Path | None = None
    ca_bundle: Path | None = None  # bound over the template's /etc/ssl/certs/ca-certificates.crt
    shim: Path | None = None  # the statx compat library (compat.py)
    preload: Path | None = None  # an ld.so.preload naming it


def agent_args(cfg: BundleConfig) -> list[str]:
    return [
        "/usr/bin/python3", "-I", "-S", "-c", INIT, BUNDLE_INSIDE if cfg.agent_bundle else "-", AGENT_PATH_INSIDE,
        "--socket", f"tcp:{cfg.address}:{cfg.port}", "--allow-peer", cfg.host_address,
        "--log", f"{RUN_DIR_INSIDE}/agent.log",
        "--ready-fd", "1",  # the container's stdout: runsc's, a pipe the backend reads (runsc.Launcher)
    ]  # fmt: skip


def cgroups_path(cfg: BundleConfig) -> str:
    # The same cgroup as a namespace sandbox's (cgroups.py makes and limits it; runsc is started
    # in it, finds it made and uses it as is: it neither sets its limits nor removes it).
    return f"/{cgroups.GROUP}/{cfg.sandbox_id}"


def resources(limits: Limits) -> dict[str, Any]:
    """linux.resources: what runsc reads to size the sandbox (its memory, CPU count)."""
    return {
        "memory": {"limit": cgroups.memory_bytes(limits)},
        "cpu": {"quota": cgroups.cpu_quota_us(limits), "period": cgroups.CPU_PERIOD_US},
        "pids": {"limit": limits.pids + PIDS_OVERHEAD},
    }


def _bind(source: Path, destination: str, readonly: bool = True) -> dict[str, Any]:
    return {
        "destination": destination, "type": "bind", "source": str(source),
        "options": ["rbind", "ro" if readonly else "rw", "nosuid", "nodev"],
    }  # fmt: skip


def config(cfg: BundleConfig) -> dict[str, Any]:
    caps = list(CAPS)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        _bind(cfg.agent_dir, RUN_DIR_INSIDE, readonly=False),
        _bind(cfg.agent_path, AGENT_PATH_INSIDE),
        _bind(cfg.resolv_conf, "/etc/resolv.conf"),
        _bind(cfg.hosts, "/etc/hosts"),
    ]  # fmt: skip
    if cfg.agent_bundle is not None:
        mounts.append(_bind(cfg.agent_bundle, BUNDLE_INSIDE))
    if cfg.ca_bundle is not None:
        mounts.append(_bind(cfg.ca_bundle, "/etc/ssl/certs/ca-certificates.crt"))
    if cfg.shim is not None and cfg.preload is not None:
        mounts += [_bind(cfg.shim, SHIM_INSIDE), _bind(cfg.preload, "/etc/ld.so.preload")]
    ids = [{"containerID": 0, "hostID": HOST_UID_BASE, "size": ID_RANGE}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": agent_args(cfg),
            "env": [f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"],
            "cwd": "/",
            # SECURITY: the docker-like set of the namespace backend (held inside gVisor's own
            # kernel; the host sees only runsc's processes).
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": []},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576},
                # SECURITY: the sandbox's memory is runsc's: at the cgroup's limit the host's OOM
                # killer would end the whole sandbox. No process inside may map more than that
                # limit, so one greedy process gets ENOMEM (MemoryError) instead. Without
                # CAP_SYS_RESOURCE nothing inside can raise it.
                {
                    "type": "RLIMIT_AS",
                    "hard": cgroups.memory_bytes(cfg.limits),
                    "soft": cgroups.memory_bytes(cfg.limits),
                },
            ],
            "noNewPrivileges": True,
        },
        # SECURITY: the overlay (the template read-only below, the sandbox's tmpfs above).
        "root": {"path": str(cfg.root), "readonly": False},
        "hostname": cfg.sandbox_id,
        "mounts": mounts,
        "linux": {
            # SECURITY: ids 0..65535 inside are host 100000..165535 for the gofer, which does the
            # sandbox's file operations on the host: the template's shifted owners read as root
            # and user inside, and what the sandbox writes is owned by the shifted ids.
            "uidMappings": ids,
            "gidMappings": ids,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "user"},
                # SECURITY: the sandbox's own netns (veth + nftables made by namespace/network.py).
                {"type": "network", "path": str(cfg.netns)},
            ],
            "resources": resources(cfg.limits),
            "cgroupsPath": cgroups_path(cfg),
            "maskedPaths": [],
            "readonlyPaths": [],
        },
    }

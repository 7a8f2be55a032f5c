"""Pure pieces of the namespace backend: limit values, cgroup paths, addresses, rules, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.backends.base import Limits
from corral.backends.namespace import bwrap, cgroups, network, seccomp, userns
from corral.backends.namespace.overlay import overlay_options, tmpfs_options


def test_userns_constants() -> None:
    assert userns.HOST_UID_BASE == 100000
    assert userns.ID_RANGE == 65536


def test_cgroup_v1_values() -> None:
    # The disk is a tmpfs charged to the memory cgroup: the limit holds memory + disk.
    v = cgroups.v1_values(Limits(cpu_count=1.5, memory_mb=512, disk_mb=100, pids=321))
    assert v["memory"] == [
        ("memory.limit_in_bytes", str(612 << 20)),
        ("memory.memsw.limit_in_bytes", str(612 << 20)),
    ]
    assert v["cpu"] == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "150000")]
    assert v["pids"] == [("pids.max", "321")]


def test_cgroup_v2_values() -> None:
    assert cgroups.v2_values(Limits(cpu_count=0.25, memory_mb=64, disk_mb=16, pids=10)) == [
        ("memory.max", str(80 << 20)),
        ("memory.swap.max", "0"),
        ("cpu.max", "25000 100000"),
        ("pids.max", "10"),
    ]
    assert cgroups.cpu_quota_us(Limits(cpu_count=0.001)) == 1000  # floor of 1 ms per period


def test_cgroup_paths(tmp_path: Path) -> None:
    assert cgroups.cgroup_dirs(2, "abc", tmp_path) == [tmp_path / "corral/abc"]
    assert cgroups.cgroup_dirs(1, "abc", tmp_path) == [
        tmp_path / c / "corral/abc" for c in ("memory", "cpu", "pids", "freezer")
    ]
    assert cgroups.SandboxCgroup(1, "abc", tmp_path).kill_dir == tmp_path / "freezer/corral/abc"
    assert cgroups.SandboxCgroup(2, "abc", tmp_path).kill_dir == tmp_path / "corral/abc"


def test_cgroup_version_probe(tmp_path: Path) -> None:
    assert cgroups.detect_version(tmp_path) is None
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    assert cgroups.detect_version(tmp_path) == 2
    (tmp_path / "cgroup.controllers").write_text("\n")  # a unified mount with no controllers
    for c in ("memory", "cpu", "pids", "freezer"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    assert cgroups.detect_version(tmp_path) == 1


def test_cgroup_v2_setup_and_limits(tmp_path: Path) -> None:
    """The v2 code path against a fake cgroupfs (this host has no v2 controllers)."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "corral").mkdir()
    (tmp_path / "corral/cgroup.subtree_control").write_text("memory pids")
    cg = cgroups.SandboxCgroup(2, "sbx", tmp_path)
    cg.create()
    assert (tmp_path / "corral/cgroup.subtree_control").read_text() == "+cpu"  # only what was missing
    cg.set_limits(Limits(cpu_count=2, memory_mb=100, disk_mb=28, pids=50))
    d = tmp_path / "corral/sbx"
    assert (d / "memory.max").read_text() == str(128 << 20)
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert (d / "pids.max").read_text() == "50"
    assert not (d / "memory.swap.max").exists()  # only written where the kernel has it
    assert cg.procs_files() == [str(d / "cgroup.procs")]


def test_ip_pool(tmp_path: Path) -> None:
    no_routes = tmp_path / "route"
    no_routes.write_text("Iface\tDestination\n")
    pool = network.IpPool("10.213.0.0/16", state_dir=tmp_path, route_table=no_routes)
    a = pool.allocate("/run/x/a")
    assert (a.index, a.host, a.sandbox) == (0, "10.213.0.1", "10.213.0.2")
    other = network.IpPool("10.213.0.0/16", state_dir=tmp_path, route_table=no_routes)  # another instance
    other.mark_used(1, "/run/y/b")
    assert other.allocate("/run/y/c").index == 2
    b = pool.allocate("/run/x/d")
    assert (b.index, b.host, b.sandbox) == (3, "10.213.0.13", "10.213.0.14")
    assert pool.used() == {0: "/run/x/a", 1: "/run/y/b", 2: "/run/y/c", 3: "/run/x/d"}
    pool.free(1, "/run/x/not-the-owner")
    assert 1 in pool.used()
    pool.free(0, "/run/x/a")
    assert 0 not in pool.used()
    assert pool.index_of("10.213.0.14") == 3 and pool.index_of("10.214.0.1") is None
    assert pool.addresses(16383).sandbox == "10.213.255.254"
    small = network.IpPool("10.9.0.0/29", state_dir=tmp_path, route_table=no_routes)
    small.allocate("a"), small.allocate("b")
    with pytest.raises(network.NetworkError):
        small.allocate("c")


def test_ip_pool_skips_routed_blocks(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "crlx\t0400D50A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n"  # 10.213.0.4/30
    )
    pool = network.IpPool("10.213.0.0/16", state_dir=tmp_path, route_table=table)
    assert pool.routed_indices() == {1}
    assert pool.allocate("a").index == 0 and pool.allocate("b").index == 2


def test_names() -> None:
    v = network.veth_name("some-sandbox-id")
    assert v.startswith("crl") and len(v) == 15
    assert v == network.veth_name("some-sandbox-id") != network.veth_name("other")
    assert network.netns_name("x1") == "corral-x1"


def test_ruleset() -> None:
    rules = network.ruleset("10.213.0.0/16", no_router=True)
    assert 'add rule inet corral input iifname "crl*" drop' in rules
    assert 'iifname "crl*" oifname "crl*" drop' in rules
    assert "ip daddr 169.254.169.254 drop" in rules
    assert "iifname != @internet_on drop" in rules
    assert 'ip saddr 10.213.0.0/16 oifname != "crl*" masquerade' in rules
    assert network.NO_ROUTER_MARK in rules
    assert network.NO_ROUTER_MARK not in network.ruleset("10.213.0.0/16", no_router=False)
    # the set survives re-initialisation: it is only ever "add"ed, never flushed
    assert "flush set" not in rules and "delete" not in rules


def test_resolv_conf(tmp_path: Path) -> None:
    local = tmp_path / "resolv.conf"
    local.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("# systemd\nnameserver 9.9.9.9\nnameserver 2620:fe::fe\nnameserver 1.1.1.1\n")
    assert network.resolv_conf([local, upstream]) == "nameserver 9.9.9.9\nnameserver 1.1.1.1\n"
    direct = tmp_path / "direct.conf"
    direct.write_text("nameserver 10.255.255.53\n")
    assert network.resolv_conf([direct, upstream]) == "nameserver 10.255.255.53\n"
    assert "127.0.0.1\tlocalhost" in network.hosts_file("sbx-1") and "sbx-1" in network.hosts_file("sbx-1")


def test_mount_options() -> None:
    assert tmpfs_options(64) == "size=64m,mode=0755,uid=100000,gid=100000"
    assert overlay_options(Path("/t"), Path("/u"), Path("/w")) == "lowerdir=/t,upperdir=/u,workdir=/w"
    with pytest.raises(ValueError):
        overlay_options(Path("/t,x"), Path("/u"), Path("/w"))
    # a template's layers stack topmost first; a read-only view has no upper dir
    assert overlay_options([Path("/l2"), Path("/l1"), Path("/t")], Path("/u"), Path("/w")) == (
        "lowerdir=/l2:/l1:/t,upperdir=/u,workdir=/w"
    )
    assert overlay_options([Path("/l1"), Path("/t")], None, None) == "lowerdir=/l1:/t"
    with pytest.raises(ValueError):
        overlay_options([Path("/a:b"), Path("/t")], None, None)
    with pytest.raises(ValueError):
        overlay_options([Path(f"/l{i}") for i in range(100)], None, None)


def test_bwrap_argv() -> None:
    cfg = bwrap.BwrapConfig(
        "sbx", Path("/r/root"), Path("/r/run"), Path("/a.py"), Path("/r/resolv"), Path("/r/hosts")
    )
    a = bwrap.argv(cfg, userns_fd=7, seccomp_fd=8, ready_fd=9)
    joined = " ".join(a)
    assert "--userns 7 --uid 0 --gid 0" in joined and "--seccomp 8" in joined
    assert "--die-with-parent" not in a  # sandboxes outlive a server restart
    assert a.count("--cap-add") == len(bwrap.CAPS) == 12
    assert "CAP_SYS_ADMIN" not in a
    assert "--clearenv" in a and "--hostname" in a
    tail = a[a.index("--") + 1 :]
    assert tail[:3] == ["/usr/bin/python3", "-I", "-S"] and "9" in tail and "--ready-fd" in tail
    assert bwrap.CA_BUNDLE_INSIDE not in a  # no host CA bundle given: the template's own stays


def test_bwrap_binds_the_host_ca_bundle_read_only() -> None:
    cfg = bwrap.BwrapConfig(
        "sbx", Path("/r/root"), Path("/r/run"), Path("/a.py"), Path("/r/resolv"), Path("/r/hosts"), Path("/host/ca.crt")
    )
    a = bwrap.argv(cfg, userns_fd=7, seccomp_fd=8, ready_fd=9)
    i = a.index("/host/ca.crt")
    assert a[i - 1 : i + 2] == ["--ro-bind", "/host/ca.crt", "/etc/ssl/certs/ca-certificates.crt"]


def test_seccomp_filter_builds(tmp_path: Path) -> None:
    pytest.importorskip("seccomp")
    path = seccomp.write_filter(tmp_path / "f.bpf")
    assert path.stat().st_size > 100 and path.stat().st_size % 8 == 0  # sock_filter entries


MODES = ["precompiled", "no-code-fd", "other-python-version"]


def _bundle(path: Path, mode: str) -> int:
    """The code fd the backend would pass for ``mode`` (-1: none)."""
    if mode == "no-code-fd":
        return -1
    code = bwrap.compile_agent(path)
    if mode == "other-python-version":
        code = b"\0\0\0\0" + code[4:]
    return bwrap.memfd_with("test", code)


@pytest.mark.parametrize("mode", MODES)
def test_agent_prelude(tmp_path: Path, mode: str) -> None:
    """The prelude runs a one-file agent from the host-compiled code, or compiles it itself."""
    import os
    import subprocess
    import sys

    script = tmp_path / "agent.py"
    script.write_text(
        "import os, sys\n"
        "os.write(3, b'ready ' + ' '.join(sys.argv[1:]).encode() + b'\\n')\n"
        "print(__name__, sorted(os.listdir('/proc/self/fd')))\n"
    )
    code_fd = _bundle(script, mode)
    r, w = os.pipe()
    extra = os.open("/dev/null", os.O_RDONLY)  # an inherited fd the prelude must close
    argv = bwrap.agent_argv(w, code_fd)
    argv[0] = sys.executable
    argv[argv.index(bwrap.AGENT_PATH_INSIDE)] = str(script)
    fds = tuple(fd for fd in (w, code_fd, extra) if fd >= 0)
    out = subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, timeout=30)
    os.close(w)
    assert out.returncode == 0, out.stderr
    assert os.read(r, 1000).startswith(b"ready --socket /run/corral/agent.sock --ready-fd 3")
    name, fds_inside = out.stdout.split(" ", 1)
    assert name == "__main__"
    assert fds_inside.strip() == "['0', '1', '2', '3', '4']"  # 3 = ready pipe, 4 = listdir's own
    for fd in (r, extra, code_fd):
        if fd >= 0:
            os.close(fd)


@pytest.mark.parametrize("mode", MODES)
def test_agent_prelude_runs_the_package(tmp_path: Path, mode: str) -> None:
    """The real agent package through the prelude: from the bundle, or from the directory."""
    import os
    import select
    import shutil
    import socket
    import subprocess
    import sys
    import time

    from corral.agent import AGENT_PATH
    from corral.agent import protocol as p

    # The bundle is compiled from a copy that answers another version: it shows which code ran.
    marked = tmp_path / "marked"
    shutil.copytree(AGENT_PATH, marked, ignore=shutil.ignore_patterns("__pycache__"))
    wire = marked / "wire.py"
    wire.write_text(wire.read_text().replace('VERSION = "1"', 'VERSION = "bundle"', 1))
    code_fd = _bundle(marked, mode)
    sock, log = str(tmp_path / "agent.sock"), tmp_path / "agent.log"
    r, w = os.pipe()
    extra = os.open("/dev/null", os.O_RDONLY)  # an inherited fd the prelude must close
    argv = bwrap.agent_argv(w, code_fd)
    argv[0] = sys.executable
    argv[argv.index(bwrap.AGENT_PATH_INSIDE)] = str(AGENT_PATH)
    argv[argv.index("--socket") + 1], argv[argv.index("--log") + 1] = sock, str(log)
    fds = tuple(fd for fd in (w, code_fd, extra) if fd >= 0)
    proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        os.close(w)
        assert select.select([r], [], [], 10)[0], "not ready within 10 s"
        assert os.read(r, 100) == b"ready\n", proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 10
        while "listening" not in (log.read_text() if log.exists() else ""):  # start-up done
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Nothing inherited is left: stdio and the listening socket.
        inside = {fd: os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")}
        assert sorted(inside)[:3] == ["0", "1", "2"] and len(inside) == 4, inside
        assert next(t for fd, t in inside.items() if int(fd) > 2).startswith("socket:"), inside
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(sock)
            s.sendall(p.encode_json({"op": "ping"}))
            answer = p.decode_json(p.recv_frame(s)[1])
        assert answer["pid"] == proc.pid
        assert answer["version"] == ("bundle" if mode == "precompiled" else "1")
    finally:
        proc.kill()
        proc.wait()
        for fd in (r, extra, code_fd):
            if fd >= 0:
                os.close(fd)

"""Pure pieces of the gVisor backend: the OCI spec, runsc's state files and the reading of its logs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from corral.backends.base import Limits
from corral.backends.gvisor import runsc, spec


def _cfg(tmp_path: Path, **kw: object) -> spec.BundleConfig:
    base: dict[str, object] = dict(
        sandbox_id="sb-1", root=tmp_path / "root", netns=Path("/run/netns/corral-sb-1"), agent_dir=tmp_path / "run",
        agent_path=tmp_path / "agent", address="10.213.0.2", host_address="10.213.0.1", port=49982,
        resolv_conf=tmp_path / "resolv.conf", hosts=tmp_path / "hosts",
        limits=Limits(cpu_count=1.5, memory_mb=256, disk_mb=64, pids=100), cgroup_version=1,
    )  # fmt: skip
    base.update(kw)
    return spec.BundleConfig(**base)  # type: ignore[arg-type]


def test_spec_identity_namespaces_and_limits(tmp_path: Path) -> None:
    c = spec.config(_cfg(tmp_path))
    assert c["hostname"] == "sb-1"
    assert c["root"] == {"path": str(tmp_path / "root"), "readonly": False}
    ids = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert c["linux"]["uidMappings"] == ids and c["linux"]["gidMappings"] == ids
    ns = {n["type"]: n.get("path") for n in c["linux"]["namespaces"]}
    assert ns == {
        "pid": None,
        "ipc": None,
        "uts": None,
        "mount": None,
        "user": None,
        "network": "/run/netns/corral-sb-1",
    }
    assert c["linux"]["cgroupsPath"] == "/corral/sb-1"
    res = c["linux"]["resources"]
    assert res["memory"] == {"limit": (256 + 64) << 20}
    assert res["cpu"] == {"quota": 150000, "period": 100000}
    assert res["pids"] == {"limit": 100 + spec.PIDS_OVERHEAD}
    rl = {r["type"]: r for r in c["process"]["rlimits"]}
    assert rl["RLIMIT_AS"]["hard"] == rl["RLIMIT_AS"]["soft"] == (256 + 64) << 20
    caps = c["process"]["capabilities"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"] and "CAP_SYS_RESOURCE" not in caps["bounding"]
    assert caps["inheritable"] == [] and c["process"]["noNewPrivileges"] is True


def test_spec_agent_listens_for_the_host_only(tmp_path: Path) -> None:
    args = spec.config(_cfg(tmp_path))["process"]["args"]
    assert args[:4] == ["/usr/bin/python3", "-I", "-S", "-c"]
    assert args[5] == "-"  # no bundle: the agent runs from its sources
    i = args.index("--socket")
    assert args[i + 1] == "tcp:10.213.0.2:49982"
    assert args[args.index("--allow-peer") + 1] == "10.213.0.1"
    assert args[args.index("--ready-fd") + 1] == "1"  # the container's stdout: the launcher's pipe
    with_bundle = spec.config(_cfg(tmp_path, agent_bundle=tmp_path / "agent.bundle"))["process"]["args"]
    assert with_bundle[5] == spec.BUNDLE_INSIDE


def test_spec_mounts(tmp_path: Path) -> None:
    c = spec.config(
        _cfg(tmp_path, ca_bundle=tmp_path / "ca.crt", shim=tmp_path / "s.so", preload=tmp_path / "p")
    )
    by_dest = {m["destination"]: m for m in c["mounts"]}
    assert (
        by_dest["/run/corral"]["source"] == str(tmp_path / "run")
        and "rw" in by_dest["/run/corral"]["options"]
    )
    for dest in ("/usr/local/lib/corral/agent", "/etc/resolv.conf", "/etc/hosts", "/etc/ssl/certs/ca-certificates.crt",
                 spec.SHIM_INSIDE, "/etc/ld.so.preload"):  # fmt: skip
        assert "ro" in by_dest[dest]["options"], dest
        assert {"nosuid", "nodev"} <= set(by_dest[dest]["options"])
    assert by_dest["/proc"]["type"] == "proc" and "ro" in by_dest["/sys"]["options"]
    plain = {m["destination"] for m in spec.config(_cfg(tmp_path))["mounts"]}
    assert "/etc/ld.so.preload" not in plain and spec.BUNDLE_INSIDE not in plain


def test_runsc_state_files(tmp_path: Path) -> None:
    (tmp_path / "a-1_sandbox:a-1.state").write_text("{}")
    (tmp_path / "a-1_sandbox:a-1.lock").write_text("")
    (tmp_path / "b_sandbox:b.state").write_text("{}")
    (tmp_path / "proc").mkdir()
    (tmp_path / "junk.state").write_text("")
    assert runsc.list_ids(tmp_path) == {"a-1", "b"}
    runsc.forget(tmp_path, "a-1")
    assert runsc.list_ids(tmp_path) == {"b"}
    assert not (tmp_path / "a-1_sandbox:a-1.lock").exists()
    runsc.forget(tmp_path, "a-1")  # idempotent
    assert runsc.list_ids(tmp_path / "missing") == set()


def test_failure_reason(tmp_path: Path) -> None:
    assert runsc.failure_reason(tmp_path) == ""
    (tmp_path / "panic.log").write_text("")
    (tmp_path / "boot.log").write_text("I1126 12:00:00.1 1 main.go:266] Exiting with status: 0\n")
    assert runsc.failure_reason(tmp_path) == ""  # info lines say nothing
    (tmp_path / "run.log").write_text(
        "I1126 x] Args: ...\nW1126 12:00:00.2 7 util.go:64] FATAL ERROR: running container: no such file\n"
    )
    assert "FATAL ERROR: running container: no such file" in runsc.failure_reason(tmp_path)
    dump = "goroutine 1 [running]:\n" + "frame\n" * 10000
    (tmp_path / "panic.log").write_text(
        "a=sys.argv[1:]\npanic: error initializing first thread: resource temporarily unavailable\n\n" + dump
    )
    why = runsc.failure_reason(tmp_path)
    assert why.startswith("runsc could not create a thread: the sandbox hit its pids limit"), why
    assert "error initializing first thread" in why


def test_launcher_reads_the_ready_line(tmp_path: Path) -> None:
    async def wait(writes: list[bytes], close: bool) -> bool | None:
        launcher = runsc.Launcher(tmp_path, tmp_path / "bundle", "sb-1", tmp_path / "log", [])
        r, w = os.pipe()
        launcher.ready_fd = r
        try:
            loop = asyncio.get_running_loop()
            for i, data in enumerate(writes):
                loop.call_later(0.01 * (i + 1), os.write, w, data)
            if close:
                loop.call_later(0.01 * (len(writes) + 1), os.close, w)
            return await launcher.wait_ready(0.5)
        finally:
            launcher.close_ready()
            if not close:
                os.close(w)

    assert asyncio.run(wait([b"rea", b"dy\n"], close=False)) is True  # split across reads
    assert asyncio.run(wait([b"Traceback ...\n"], close=True)) is False  # EOF first: the sandbox is gone
    assert asyncio.run(wait([], close=False)) is None  # nothing yet

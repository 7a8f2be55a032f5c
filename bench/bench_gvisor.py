"""`python -m bench.bench_gvisor`: the gVisor backend's start, next to its floor, as a table and JSON.

- backend start -> first output of `echo hi` run through the agent (TCP): p50/p95, target p50 <= 250 ms
- the floor, measured in the same run: a bare `runsc run` (ptrace, no network) of the same bundle
  running /bin/echo, spawn -> first output
- idle host memory per sandbox: RSS and PSS of its runsc processes (sentry, gofer, ptrace stubs)

BENCH_QUICK=1 makes fewer runs. Needs root and runsc (skipped with the probe's reason otherwise).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corral.agent.client import AgentClient  # noqa: E402
from corral.backends.base import SandboxSpec  # noqa: E402
from corral.backends.gvisor import runsc, spec  # noqa: E402
from corral.backends.gvisor.backend import GVisorBackend  # noqa: E402
from corral.backends.namespace import cgroups, overlay  # noqa: E402
from corral.templates import template_path  # noqa: E402
from helpers import TEMPLATES_DIR  # noqa: E402

from .__main__ import RESULTS, ms  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
TARGET_P50_MS = 250.0


async def start_to_first_output(backend: GVisorBackend, rootfs: Path, runs: int) -> tuple[dict, dict]:
    samples, parts = [], {"prepare": [], "runsc": [], "agent_ready": []}
    for i in range(runs + 2):
        sid = f"bench-{secrets.token_hex(4)}"
        t0 = time.perf_counter()
        h = await backend.start(SandboxSpec(sid, rootfs, internet=False))
        first = None
        async for ev in AgentClient(h.agent_socket).exec("/bin/echo", ["hi"], user="user", timeout=30):
            if ev["type"] == "stdout" and first is None:
                first = time.perf_counter()
                assert ev["data"] == b"hi\n", ev
        assert first is not None
        await backend.cleanup(h)
        if i >= 2:  # the first starts warm the page cache and compile the agent
            samples.append(first - t0)
            for k in parts:
                parts[k].append(h.state["timings_ms"][k] / 1000)
    return ms(samples), {k: ms(v) for k, v in parts.items()}


def floor(runs: int) -> list[float]:
    """Seconds from spawn to first output of a bare `runsc run` of the sandbox's bundle (overlay
    root, the same mounts and id mapping) with /bin/echo as its process and no network (what
    bench/backends.py calls)."""
    return bare_runsc_echo(template_path(TEMPLATES_DIR, "base"), runs)


def bare_runsc_echo(rootfs: Path, runs: int) -> list[float]:
    base = Path(f"/run/corral-bench-gvisor-{secrets.token_hex(3)}")
    base.mkdir(mode=0o711)
    state = base / ".runsc"
    samples = []
    try:
        for i in range(runs + 2):
            d = base / str(i)
            d.mkdir(mode=0o755)
            os.chown(d, 0, 100000)
            overlay.mount_rootfs([rootfs], d / "disk", d / "root", 64)
            try:
                (d / "bundle").mkdir()
                for name in ("resolv.conf", "hosts"):
                    (d / name).write_text("")
                cfg = spec.BundleConfig(
                    sandbox_id=f"bench-floor-{i}", root=d / "root", netns=Path("/"), agent_dir=d / "disk" / "run",
                    agent_path=ROOT / "src/corral/agent/daemon", address="127.0.0.1", host_address="127.0.0.1",
                    port=1, resolv_conf=d / "resolv.conf", hosts=d / "hosts", limits=spec.Limits(), cgroup_version=1,
                )  # fmt: skip
                config = spec.config(cfg)
                config["process"]["args"] = ["/bin/echo", "hi"]
                config["linux"]["namespaces"] = [
                    n for n in config["linux"]["namespaces"] if n["type"] != "network"
                ]
                config["linux"]["namespaces"].append({"type": "network"})
                del config["linux"]["cgroupsPath"]
                (d / "bundle" / "config.json").write_text(json.dumps(config))
                argv = [
                    *runsc.base_argv(state),
                    "--network=none",
                    "run",
                    "--bundle",
                    str(d / "bundle"),
                    f"bench-floor-{i}",
                ]
                t0 = time.perf_counter()
                p = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
                )
                assert p.stdout is not None
                line = p.stdout.readline()
                t1 = time.perf_counter()
                _, err = p.communicate(timeout=30)
                assert line.strip() == b"hi", (line, err.decode(errors="replace")[-500:])
                if i >= 2:
                    samples.append(t1 - t0)
            finally:
                overlay.unmount_rootfs(d / "disk", d / "root")
                shutil.rmtree(d)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return samples


def _mem_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


async def idle_memory(backend: GVisorBackend, rootfs: Path, count: int) -> dict:
    handles = []
    try:
        for _ in range(count):
            handles.append(
                await backend.start(SandboxSpec(f"bench-{secrets.token_hex(4)}", rootfs, internet=False))
            )
        await asyncio.sleep(2.0)  # idle: the agents settle
        rss = pss = procs = 0
        charged = 0
        for h in handles:
            cg = cgroups.SandboxCgroup(h.state["cgroup_version"], h.sandbox_id)
            for pid in cg.pids():
                r, p = _mem_kib(pid)
                rss, pss, procs = rss + r, pss + p, procs + 1
            charged += cg.memory()[0]
        return {
            "sandboxes": count,
            "rss_mib_each": round(rss / 1024 / count, 1),
            "pss_mib_each": round(pss / 1024 / count, 1),
            "cgroup_charged_mib_each": round(charged / 2**20 / count, 1),
            "host_processes_each": round(procs / count, 1),
        }
    finally:
        for h in handles:
            await backend.cleanup(h)


async def main() -> dict:
    backend = GVisorBackend(run_dir=Path(f"/run/corral-bench-gv-{secrets.token_hex(3)}"))
    probe = backend.probe()
    if not probe.ok:
        print(f"gvisor bench skipped: {probe.reason}")
        return {"skipped": probe.reason}
    rootfs = template_path(TEMPLATES_DIR, "base")
    runs = 8 if QUICK else 30
    try:
        start, parts = await start_to_first_output(backend, rootfs, runs)
        floor_ms = ms(await asyncio.to_thread(bare_runsc_echo, rootfs, runs))
        memory = await idle_memory(backend, rootfs, 4 if QUICK else 10)
    finally:
        await backend.close()
    return {"start_to_first_output": start, "phases": parts, "floor_bare_runsc_echo": floor_ms, "idle_memory": memory,
            "target_p50_ms": TARGET_P50_MS, "platform": runsc.PLATFORM}  # fmt: skip


def report(r: dict) -> None:
    if "skipped" in r:
        return
    rows = [("gvisor start -> first output (echo via agent)", r["start_to_first_output"]),
            *((f"  phase: {k}", v) for k, v in r["phases"].items()),
            ("floor: bare runsc run /bin/echo (no network)", r["floor_bare_runsc_echo"])]  # fmt: skip
    print(f"{'scenario':48s} {'p50 ms':>9s} {'p95 ms':>9s} {'min ms':>9s} {'n':>4s}")
    for name, m in rows:
        print(f"{name:48s} {m['p50_ms']:9.1f} {m['p95_ms']:9.1f} {m['min_ms']:9.1f} {m['n']:4d}")
    m = r["idle_memory"]
    print(
        f"idle host memory per sandbox ({m['sandboxes']} sandboxes): RSS {m['rss_mib_each']} MiB, "
        f"PSS {m['pss_mib_each']} MiB, charged to its cgroup {m['cgroup_charged_mib_each']} MiB, "
        f"{m['host_processes_each']} host processes"
    )
    p50 = r["start_to_first_output"]["p50_ms"]
    verdict = "meets" if p50 <= TARGET_P50_MS else "misses"
    print(f"target p50 <= {TARGET_P50_MS:.0f} ms: {verdict} ({p50:.1f} ms)")


if __name__ == "__main__":
    result = asyncio.run(main())
    report(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gvisor.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {out}")

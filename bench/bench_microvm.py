"""The microVM backend (issue 7): snapshot-restore start, cold boot, the bare QEMU restore floor,
and idle host memory per sandbox.

    python -m bench.bench_microvm        (BENCH_QUICK=1 for a short run)

Through the backend itself (no server): start -> first output of ``echo`` through the agent, for
starts that restore the template's snapshot and for cold boots; the floor is QEMU alone restoring
that snapshot until the guest runs again (no network, identity or agent). Idle memory: sandboxes
with 256 MiB sit idle; RSS and PSS of each one's QEMU (``/proc/<pid>/smaps_rollup``).
``floor(runs)`` is also what ``bench.backends`` shows as the microvm floor.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corral.agent.client import AgentClient  # noqa: E402
from corral.backends.base import Limits, SandboxSpec  # noqa: E402
from corral.backends.microvm import qemu, vmnet  # noqa: E402
from corral.backends.microvm.backend import MicroVMBackend  # noqa: E402
from corral.templates import template_path  # noqa: E402
from helpers import TEMPLATES_DIR  # noqa: E402

from .__main__ import ms, rss_pss, write_results  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
DATA_DIR = Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))
RUN_DIR = Path("/run/corral-bench")


def spec(memory_mb: int = 512) -> SandboxSpec:
    return SandboxSpec(f"bench-{secrets.token_hex(4)}", template_path(TEMPLATES_DIR, "base"), Limits(memory_mb=memory_mb))


async def start_to_echo(backend: MicroVMBackend, runs: int, memory_mb: int = 512) -> tuple[list[float], list[dict[str, float]]]:
    samples, phases = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        h = await backend.start(spec(memory_mb))
        first = None
        try:
            async for ev in AgentClient(h.agent_socket).exec("/bin/echo", ["hi"], user="user"):
                if ev["type"] == "stdout" and first is None:
                    first = time.perf_counter()
            assert first is not None
            samples.append(first - t0)
            phases.append({**backend.last_timings, "first_exec": round((first - t0) * 1000 - sum(backend.last_timings.values()), 1)})
        finally:
            await backend.cleanup(h)
    return samples, phases


async def _floor(runs: int, memory_mb: int = 512) -> list[float]:
    backend = MicroVMBackend(run_dir=RUN_DIR, data_dir=DATA_DIR)
    snap = await backend.ensure_snapshot(spec(memory_mb))
    image, _ = await backend.template_assets(spec(memory_mb))
    work = Path(f"/run/corral-bench-floor-{secrets.token_hex(3)}")
    work.mkdir()
    netns = f"corral-snap-{secrets.token_hex(4)}"
    await vmnet.create_bare(netns)
    samples = []
    try:
        for i in range(runs + 1):
            disk = work / f"{i}.qcow2"
            shutil.copyfile(snap.overlay, disk)
            cfg = backend._config(image, disk, Limits(memory_mb=memory_mb), work, incoming=True)
            for f in (cfg.qmp, cfg.console):
                f.unlink(missing_ok=True)
            t0 = time.perf_counter()
            pid = qemu.spawn(qemu.argv(cfg), vmnet.netns_path(netns), work / "qemu.log", snap.state)
            try:
                await asyncio.to_thread(_resumed, cfg.qmp)
                if i:  # the first run warms the page cache
                    samples.append(time.perf_counter() - t0)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                disk.unlink()
    finally:
        await vmnet.delete_netns(netns)
        shutil.rmtree(work, ignore_errors=True)
        await backend.close()
    return samples


def _resumed(path: Path) -> None:
    from corral.backends.microvm.backend import _wait_resumed

    _wait_resumed(path)


def floor(runs: int) -> list[float]:
    """Seconds from spawning QEMU with the base template's snapshot to the guest running again."""
    return asyncio.run(_floor(runs))


async def idle_memory(backend: MicroVMBackend, count: int, memory_mb: int = 256) -> dict[str, Any]:
    handles = []
    try:
        for _ in range(count):
            h = await backend.start(spec(memory_mb))
            handles.append(h)
            async for _ev in AgentClient(h.agent_socket).exec("/bin/true", [], user="user"):
                pass
        await asyncio.sleep(3)  # idle
        per = [rss_pss({int(h.state["pid"])}) for h in handles]
    finally:
        await asyncio.gather(*(backend.cleanup(h) for h in handles))
    mib = 2**20
    return {"sandboxes": count, "memory_mb": memory_mb,
            "rss_mib_each": round(sum(r for r, _ in per) / count / mib, 1),
            "pss_mib_each": round(sum(p for _, p in per) / count / mib, 1)}  # fmt: skip


async def run() -> dict[str, Any]:
    runs = 5 if QUICK else 20
    restore = MicroVMBackend(run_dir=RUN_DIR, data_dir=DATA_DIR)
    cold = MicroVMBackend(run_dir=RUN_DIR, data_dir=DATA_DIR, snapshots=False)
    try:
        await restore.ensure_snapshot(spec())
        await start_to_echo(restore, 1)  # warms the page cache
        r_samples, r_phases = await start_to_echo(restore, runs)
        c_samples, _ = await start_to_echo(cold, 2 if QUICK else 5)
        idle = await idle_memory(restore, 3 if QUICK else 5)
    finally:
        await restore.close()
        await cold.close()
    phases = {k: round(sorted(p.get(k, 0) for p in r_phases)[len(r_phases) // 2], 1) for k in r_phases[0]}
    return {
        "accel": restore.accel, "kernel": restore.kernel_version, "machine": {"cores": os.cpu_count()}, "quick": QUICK,
        "restore_start_to_echo": ms(r_samples), "restore_phases_p50_ms": phases,
        "cold_boot_start_to_echo": ms(c_samples), "bare_qemu_restore": ms(await _floor(runs)), "idle": idle,
    }  # fmt: skip


def main() -> int:
    res = asyncio.run(run())
    print(f"\nmicroVM ({res['accel']}, kernel {res['kernel']}, {res['machine']['cores']} cores)")
    print(f"{'':<34} {'p50':>9} {'p95':>9} {'n':>4}")
    for label, key in (("restore start -> echo output", "restore_start_to_echo"),
                       ("cold boot start -> echo output", "cold_boot_start_to_echo"),
                       ("bare QEMU restore (floor)", "bare_qemu_restore")):  # fmt: skip
        r = res[key]
        print(f"{label:<34} {r['p50_ms']:>6} ms {r['p95_ms']:>6} ms {r['n']:>4}")
    print(f"restore phases, p50 ms: {res['restore_phases_p50_ms']}")
    i = res["idle"]
    print(f"idle, {i['memory_mb']} MiB guests: QEMU RSS {i['rss_mib_each']} MiB, PSS {i['pss_mib_each']} MiB each ({i['sandboxes']} sandboxes)")
    print("target: restore p50 <= 250 ms")
    print(f"wrote {write_results('microvm', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

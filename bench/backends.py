"""Every isolation backend in the same run (issue 7): create -> first output, and idle host memory.

    python -m bench.backends            (part of `make bench`; BENCH_QUICK=1 for a short run,
                                        BENCH_BACKENDS=gvisor,microvm for some backends only)

Through the SDK against one server with the warm pool off, so each create really starts a
sandbox on the backend asked for; then against a server whose default is that backend, with its
warm pool on (what steady traffic sees). Floors are measured in the same run: a bare bubblewrap `echo`
for namespaces, and each backend's own floor when it has one (``floor()`` in
``bench/bench_<backend>.py``: a bare ``runsc run``, a bare QEMU restore).

Idle memory: N sandboxes of each backend sit idle; the host's MemAvailable drop per sandbox, and
the RSS and PSS (``/proc/<pid>/smaps_rollup``) of each sandbox's host processes (those whose
command line names the sandbox, and their descendants).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corral import Sandbox  # noqa: E402
from corral.templates import template_path  # noqa: E402
from helpers import TEMPLATES_DIR, ServerProcess  # noqa: E402

from .__main__ import mem_available, ms, rss_pss, write_results  # noqa: E402
from .floor import bare_bwrap_echo  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
ONLY = set(filter(None, os.environ.get("BENCH_BACKENDS", "").split(",")))  # e.g. BENCH_BACKENDS=gvisor,microvm
TARGETS = {"gvisor": "p50 <= 250 ms", "microvm": "p50 <= 250 ms (snapshot restore, TCG here)"}


def create_to_first_output(kw: dict[str, str], isolation: str, runs: int, gap: float = 0.0) -> dict[str, float]:
    """Create -> first output of `echo hi` (the kill is not timed), one cycle every ``gap`` seconds."""
    samples = []
    for i in range(runs + 2):
        next_start = time.monotonic() + gap
        t0 = time.perf_counter()
        sbx = Sandbox.create(isolation=isolation, **kw)
        first: list[float] = []
        try:
            r = sbx.commands.run("echo hi", on_stdout=lambda _, first=first: first.append(time.perf_counter()))
            assert r.stdout == "hi\n" and first
        finally:
            sbx.kill()
        if i >= 2:  # the first ones warm caches (and make a microVM's template snapshot)
            samples.append(first[0] - t0)
        time.sleep(max(0.0, next_start - time.monotonic()))
    return ms(samples)


def pooled_create_to_first_output(isolation: str, runs: int) -> dict[str, float]:
    """The same against a server whose default backend this is, with its warm pool on (a create
    claims a started sandbox; the gap lets the pool refill, as steady traffic would)."""
    server = ServerProcess(pool_size=2, extra_env={"CORRAL_ISOLATION": isolation}).start()
    try:
        kw = {"api_url": server.url, "api_key": server.api_key}
        time.sleep(3)  # the pool fills
        return create_to_first_output(kw, isolation, runs, gap=1.0)
    finally:
        server.stop()
        server.remove_dirs()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def sandbox_processes(sandbox_id: str) -> set[int]:
    """Host pids of a sandbox: processes whose command line names it, and their descendants."""
    roots = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if sandbox_id.encode() in (p / "cmdline").read_bytes():
                    roots.add(int(p.name))
            except OSError:
                continue
    kids, found, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += kids.get(pid, [])
    return found


def idle_memory(kw: dict[str, str], isolation: str, count: int, memory_mb: int) -> dict[str, Any]:
    time.sleep(2)  # earlier cleanups settle
    before = mem_available()
    sandboxes = [Sandbox.create(isolation=isolation, memory_mb=memory_mb, timeout=600, **kw) for _ in range(count)]
    try:
        for s in sandboxes:
            s.commands.run("true")
        time.sleep(3)  # idle
        after = mem_available()
        per = [rss_pss(sandbox_processes(s.sandbox_id)) for s in sandboxes]
    finally:
        for s in sandboxes:
            s.kill()
    mib = 2**20
    return {
        "sandboxes": count, "memory_mb": memory_mb,
        "host_mib_each": round((before - after) / count / mib, 1),
        "rss_mib_each": round(sum(r for r, _ in per) / count / mib, 1),
        "pss_mib_each": round(sum(p for _, p in per) / count / mib, 1),
    }  # fmt: skip


def backend_floor(name: str, runs: int) -> dict[str, float] | None:
    """The backend's own floor, from bench/bench_<name>.py's ``floor(runs)`` (seconds), if it has one."""
    if name == "namespace":
        return ms(bare_bwrap_echo(template_path(TEMPLATES_DIR, "base"), runs=runs))
    try:
        module = importlib.import_module(f"bench.bench_{name}")
    except ImportError:
        return None
    floor: Callable[[int], list[float]] | None = getattr(module, "floor", None)
    return ms(floor(runs)) if floor else None


def main() -> int:
    runs = 5 if QUICK else 20
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "quick": QUICK, "backends": {}}
    server = ServerProcess(pool_size=0).start()
    kw = {"api_url": server.url, "api_key": server.api_key}
    try:
        infos = {b.name: b for b in Sandbox.backends(**kw)}
        for name, info in infos.items():
            if ONLY and name not in ONLY:
                continue
            entry: dict[str, Any] = {"works": info.works, "reason": info.reason}
            results["backends"][name] = entry
            if not info.works:
                print(f"{name}: does not work here ({info.reason})", flush=True)
                continue
            print(f"{name}: floor...", flush=True)
            entry["floor"] = backend_floor(name, runs)
            print(f"{name}: create -> first output...", flush=True)
            entry["create_to_first_output"] = create_to_first_output(kw, name, runs)
            print(f"{name}: the same from a warm pool...", flush=True)
            entry["pooled_create_to_first_output"] = pooled_create_to_first_output(name, runs)
            print(f"{name}: idle memory...", flush=True)
            entry["idle"] = idle_memory(kw, name, 3 if QUICK else 10, 256)
    finally:
        server.stop()
        server.remove_dirs()

    print(f"\n{'backend':<10} {'create->first output p50/p95':>30} {'pooled p50/p95':>20} {'floor p50':>10}"
          f" {'idle host/RSS/PSS MiB each':>28}  target")  # fmt: skip
    for name, e in results["backends"].items():
        if not e["works"]:
            print(f"{name:<10} {'does not work here: ' + e['reason'][:60]}")
            continue
        c, p, f, i = e["create_to_first_output"], e["pooled_create_to_first_output"], e.get("floor"), e["idle"]
        floor = f"{f['p50_ms']} ms" if f else "-"
        idle = f"{i['host_mib_each']}/{i['rss_mib_each']}/{i['pss_mib_each']}"
        pooled = f"{p['p50_ms']} / {p['p95_ms']} ms"
        print(f"{name:<10} {c['p50_ms']:>17} / {c['p95_ms']} ms {pooled:>20} {floor:>10} {idle:>28}  {TARGETS.get(name, '-')}")
    print(f"\nwrote {write_results('backends', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

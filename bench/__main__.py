"""`make bench`: corral's numbers next to their floor, printed as a table and written as JSON.

Scenarios (issue 2): create + first output of `echo hi` + kill through the SDK over HTTP; command
round trip of `true`; PTY keystroke echo round trip; 200 concurrent idle sandboxes (host memory each, time to create all);
20 parallel clients doing create/run/kill for a fixed time (errors, leftovers, sandboxes/s).
Code interpreter (issue 3, when the code-interpreter template is built): `x = 1` round trip in a
warm Python context, next to the command round trip of the same run; the first cell of a new sandbox.
Set BENCH_QUICK=1 for a short smoke run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corral import AsyncSandbox, Sandbox  # noqa: E402
from corral.templates import template_path  # noqa: E402
from helpers import TEMPLATES_DIR, ServerProcess, leftovers  # noqa: E402

from .floor import bare_bwrap_echo  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
RESULTS = Path(__file__).resolve().parent / "results"
CODE = (TEMPLATES_DIR / "code-interpreter" / "current.json").exists()


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(samples, 50) * 1000, 2), "p95_ms": round(pct(samples, 95) * 1000, 2),
            "min_ms": round(min(samples) * 1000, 2), "n": len(samples)}


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def rss_pss(pids: set[int]) -> tuple[int, int]:
    """Bytes of resident and proportional set size, summed over ``pids`` (gone ones count 0)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def write_results(kind: str, results: dict) -> Path:
    """``bench/results/<kind>-<time>.json``."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    return out


def bench_create_run_kill(server: ServerProcess, runs: int, gap: float) -> dict:
    """Sequential create -> first output of `echo hi` -> kill, one cycle every ``gap`` seconds."""
    kw = {"api_url": server.url, "api_key": server.api_key}
    samples = []
    for i in range(runs + 3):
        next_start = time.monotonic() + gap
        t0 = time.perf_counter()
        sbx = Sandbox.create(**kw)
        first: list[float] = []
        result = sbx.commands.run("echo hi", on_stdout=lambda _, first=first: first.append(time.perf_counter()))
        assert result.stdout == "hi\n" and first
        sbx.kill()
        t1 = time.perf_counter()
        if i >= 3:  # the first cycles warm the client and the server
            samples.append(t1 - t0)
        time.sleep(max(0.0, next_start - time.monotonic()))
    return {**ms(samples), "gap_s": gap}


def bench_round_trip(server: ServerProcess, runs: int) -> dict:
    with Sandbox.create(api_url=server.url, api_key=server.api_key) as sbx:
        # Steady state: let the previous scenario's cleanups and the pool refill finish first.
        time.sleep(1.0)
        for _ in range(5):
            sbx.commands.run("true")
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sbx.commands.run("true")
            samples.append(time.perf_counter() - t0)
    return ms(samples)


def bench_code(server: ServerProcess, runs: int) -> dict:
    """``x = 1`` in a warm Python context, and the first cell of a fresh code-interpreter sandbox."""
    api = {"api_url": server.url, "api_key": server.api_key}
    first = []
    for _ in range(3 if QUICK else 5):
        with Sandbox.create(template="code-interpreter", **api) as sbx:
            t0 = time.perf_counter()
            sbx.run_code("x = 1")
            first.append(time.perf_counter() - t0)
    with Sandbox.create(template="code-interpreter", **api) as sbx:
        for _ in range(10):
            sbx.run_code("x = 1")
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            execution = sbx.run_code("x = 1")
            samples.append(time.perf_counter() - t0)
            assert execution.error is None
    return {"round_trip": ms(samples), "first_cell_after_create": ms(first)}


def bench_pty_echo(server: ServerProcess, keystrokes: int) -> dict:
    """One character typed into a terminal (``cat`` in raw mode) until it echoes back."""
    with Sandbox.create(api_url=server.url, api_key=server.api_key) as sbx:
        h = sbx.pty.create(cmd="stty raw -echo; echo ready; exec cat")
        for _ in h:
            if "ready" in h.output:
                break
        samples = []
        for i in range(keystrokes + 5):
            key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            seen = len(h.output)
            t0 = time.perf_counter()
            h.send_stdin(key)
            for _ in h:
                if key in h.output[seen:]:
                    break
            if i >= 5:  # the first keystrokes warm the connections
                samples.append(time.perf_counter() - t0)
        h.kill()
    return ms(samples)


async def bench_idle(server: ServerProcess, count: int) -> dict:
    kw = {"api_url": server.url, "api_key": server.api_key}
    before = mem_available()
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(8)  # creates in flight at once; more only queue up on 2 cores

    async def one() -> AsyncSandbox:
        async with sem:
            return await AsyncSandbox.create(timeout=600, **kw)

    sandboxes = await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(1)
    used = before - mem_available()
    await asyncio.gather(*(s.kill() for s in sandboxes))
    return {"sandboxes": count, "create_all_s": round(elapsed, 2), "host_mib_each": round(used / count / 2**20, 2)}


async def bench_parallel(server: ServerProcess, clients: int, seconds: float) -> dict:
    kw = {"api_url": server.url, "api_key": server.api_key}
    done, errors_seen, ids = 0, [], set()
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            try:
                sbx = await AsyncSandbox.create(**kw)
                ids.add(sbx.sandbox_id)
                r = await sbx.commands.run("echo ok")
                assert r.stdout.strip() == "ok", r.stdout
                await sbx.kill()
                done += 1
            except Exception as exc:  # counted and reported, the run goes on
                errors_seen.append(repr(exc)[:200])

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    settle = time.monotonic() + 60  # cleanup runs after each kill answered: give it time, then count
    while leftovers(server.run_dir, ids) and time.monotonic() < settle:
        await asyncio.sleep(0.2)
    return {"clients": clients, "seconds": round(elapsed, 1), "sandboxes": done,
            "sandboxes_per_s": round(done / elapsed, 1), "errors": len(errors_seen), "first_errors": errors_seen[:3],
            "leftovers": leftovers(server.run_dir, ids)}


def main() -> int:
    rootfs = template_path(TEMPLATES_DIR, "base")
    results: dict = {"machine": {"cores": os.cpu_count()}, "quick": QUICK}
    print("measuring the floor (bare bwrap echo on a tmpfs overlay)...", flush=True)
    results["floor_bwrap_echo"] = ms(bare_bwrap_echo(rootfs, runs=10 if QUICK else 40))
    server = ServerProcess(pool_size=4).start()
    try:
        print("create + first output + kill through the SDK...", flush=True)
        results["create_echo_kill"] = bench_create_run_kill(server, runs=10 if QUICK else 60, gap=0.15)
        print("command round trip...", flush=True)
        results["command_round_trip"] = bench_round_trip(server, runs=30 if QUICK else 200)
        if CODE:
            print("code interpreter: x = 1 round trip, first cell...", flush=True)
            results["code"] = bench_code(server, runs=30 if QUICK else 200)
        print("PTY keystroke echo round trip...", flush=True)
        results["pty_keystroke_echo"] = bench_pty_echo(server, keystrokes=30 if QUICK else 100)
        print("concurrent idle sandboxes...", flush=True)
        results["idle_sandboxes"] = asyncio.run(bench_idle(server, 20 if QUICK else 200))
        print("parallel clients...", flush=True)
        results["parallel_clients"] = asyncio.run(bench_parallel(server, 4 if QUICK else 20, 5 if QUICK else 60))
    finally:
        server.stop()
        server.remove_dirs()
    print("the same without the warm pool (every create starts a sandbox)...", flush=True)
    cold = ServerProcess(pool_size=0).start()
    try:
        results["create_echo_kill_cold"] = bench_create_run_kill(cold, runs=10 if QUICK else 40, gap=0.15)
    finally:
        cold.stop()
        cold.remove_dirs()

    floor = results["floor_bwrap_echo"]
    rows = [
        ("floor: bare bwrap echo on overlay", f"{floor['p50_ms']} ms", f"{floor['p95_ms']} ms", "-"),
        ("create + echo hi + kill (SDK, HTTP)", f"{results['create_echo_kill']['p50_ms']} ms",
         f"{results['create_echo_kill']['p95_ms']} ms", "p50 <= 25 ms, p95 <= 50 ms"),
        ("  the same, no warm pool (cold start)", f"{results['create_echo_kill_cold']['p50_ms']} ms",
         f"{results['create_echo_kill_cold']['p95_ms']} ms", "-"),
        ("command round trip `true`", f"{results['command_round_trip']['p50_ms']} ms",
         f"{results['command_round_trip']['p95_ms']} ms", "p50 <= 5 ms"),
        *([("run_code `x = 1` (warm Python context)", f"{results['code']['round_trip']['p50_ms']} ms",
            f"{results['code']['round_trip']['p95_ms']} ms", "p50 <= 10 ms"),
           ("  first cell of a new sandbox (pool warm)", f"{results['code']['first_cell_after_create']['p50_ms']} ms",
            f"{results['code']['first_cell_after_create']['p95_ms']} ms", "-")] if CODE else []),
        ("PTY keystroke echo round trip", f"{results['pty_keystroke_echo']['p50_ms']} ms",
         f"{results['pty_keystroke_echo']['p95_ms']} ms", "p50 <= 5 ms"),
        (f"{results['idle_sandboxes']['sandboxes']} idle sandboxes", f"{results['idle_sandboxes']['host_mib_each']} MiB each",
         f"all in {results['idle_sandboxes']['create_all_s']} s", "<= 5 MiB each, <= 10 s"),
        (f"{results['parallel_clients']['clients']} parallel clients", f"{results['parallel_clients']['sandboxes_per_s']} sandboxes/s",
         f"{results['parallel_clients']['errors']} errors", "0 errors, 0 leftovers"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'scenario':<{width}}  {'p50 / value':>18}  {'p95 / extra':>18}  target")
    for name, a, b, target in rows:
        print(f"{name:<{width}}  {a:>18}  {b:>18}  {target}")
    print(f"\nwrote {write_results('core', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

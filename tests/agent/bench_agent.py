"""Agent micro-benchmarks (not collected by pytest): ``python tests/agent/bench_agent.py``.

- start: exec of the agent -> ``ready`` on the ready fd, and -> first ping answered
- exec round trip (AgentClient, connection to end event) for ``/bin/bash -c true`` and ``/bin/true``
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.agent.conftest import start_agent, stop_agent

from corral.agent.client import AgentClient


def pct(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs) * 1000:.1f} ms  p90 {xs[int(len(xs) * 0.9)] * 1000:.1f} ms  min {xs[0] * 1000:.1f} ms"


async def ping_ready(path: str) -> None:
    c = AgentClient(path)
    await c.ping()


def bench_start(n: int = 30) -> None:
    ready, pinged = [], []
    for _ in range(n):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            a = start_agent(Path(d))
            asyncio.run(ping_ready(a.socket))
            pinged.append(time.perf_counter() - t0)
            ready.append(a.start_seconds)
            stop_agent(a)
    print(f"start (exec -> ready)        {pct(ready)}")
    print(f"start (exec -> ping answered; includes asyncio.run) {pct(pinged)}")


async def bench_exec(client: AgentClient, cmd: str, args: list[str], n: int = 100) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        async for ev in client.exec(cmd, args, user="root", timeout=60):
            if ev["type"] == "end":
                assert ev["exit_code"] == 0
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    bench_start()
    with tempfile.TemporaryDirectory() as d:
        a = start_agent(Path(d))
        try:

            async def run() -> None:
                c = a.client
                await c.ping()
                await bench_exec(c, "/bin/true", [], 10)  # warm up (lazy imports)
                print(f"exec /bin/bash -c true       {pct(await bench_exec(c, '/bin/bash', ['-c', 'true']))}")
                print(
                    f"exec /bin/bash -l -c true    {pct(await bench_exec(c, '/bin/bash', ['-l', '-c', 'true']))}"
                )
                print(f"exec /bin/true               {pct(await bench_exec(c, '/bin/true', []))}")
                pings = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    await c.ping()
                    pings.append(time.perf_counter() - t0)
                print(f"ping                         {pct(pings)}")

            asyncio.run(run())
        finally:
            stop_agent(a)
    print(f"(python: {os.path.realpath('/usr/bin/python3')}, cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()

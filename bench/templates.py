"""`python -m bench.templates`: template builds and starts (issue 4), printed and written as JSON.

- unchanged rebuild of a small Dockerfile (every step CACHED): p50, target <= 500 ms
- create + `echo hi` + kill, cold (no warm pool), from a template with 1 GiB of installed files
  (a RUN step writes them: 1 GiB in ~4000 files, the shape of a package install) vs from `base`:
  target within 10 %

BENCH_QUICK=1 uses 128 MiB and fewer runs. The big template is built once and cached (its layer
stays until the template is deleted: pass BENCH_KEEP=0 to delete it at the end).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corral import Sandbox, Template  # noqa: E402
from helpers import ServerProcess  # noqa: E402

from .__main__ import RESULTS, ms  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
BIG_MIB = 128 if QUICK else 1024


def bench_rebuild(kw: dict[str, str], runs: int) -> dict:
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "app.py").write_text("print('bench')\n")
        Path(ctx, "Dockerfile").write_text(
            "FROM base\nENV A=1\nRUN echo bench-rebuild > /bench.txt\nWORKDIR /app\nCOPY app.py .\nRUN python3 app.py\n"
        )
        Template.build(name="bench-rebuild", context_dir=ctx, **kw)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = Template.build(name="bench-rebuild", context_dir=ctx, **kw)
            samples.append(time.perf_counter() - t0)
            assert len(r.cached_steps) == 6, r.cached_steps
        Template.delete("bench-rebuild", **kw)
    return ms(samples)


def bench_big_template_start(kw: dict[str, str], runs: int) -> dict:
    files = 4096
    size_kib = BIG_MIB * 1024 // files
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "big.py").write_text(
            "import os\n"
            f"for i in range({files}):\n"
            "    d = f'/opt/big/{i % 64}'\n"
            "    os.makedirs(d, exist_ok=True)\n"
            f"    open(f'{{d}}/{{i}}.bin', 'wb').write(os.urandom({size_kib} * 1024))\n"
        )
        Path(ctx, "Dockerfile").write_text("FROM base\nCOPY big.py /tmp/\nRUN python3 /tmp/big.py && rm /tmp/big.py\n")
        t0 = time.perf_counter()
        r = Template.build(name=f"bench-big-{BIG_MIB}", context_dir=ctx, **kw)
        built_s = time.perf_counter() - t0
    out: dict = {"big_mib": BIG_MIB, "build_s": round(built_s, 2), "build_cached": len(r.cached_steps) == 3}
    for template in (f"bench-big-{BIG_MIB}", "base", f"bench-big-{BIG_MIB}", "base"):  # interleaved
        samples = out.setdefault(template.split("-")[0] if template != "base" else "base", [])
        for _ in range(runs):
            t0 = time.perf_counter()
            with Sandbox.create(template=template, **kw) as sbx:
                assert sbx.commands.run("echo hi").stdout == "hi\n"
            samples.append(time.perf_counter() - t0)
    big, base = ms(out.pop("bench")), ms(out.pop("base"))
    out.update(big=big, base=base, ratio=round(big["p50_ms"] / base["p50_ms"], 3))
    if os.environ.get("BENCH_KEEP", "1") == "0":
        Template.delete(f"bench-big-{BIG_MIB}", **kw)
    return out


def main() -> int:
    results: dict = {"quick": QUICK}
    server = ServerProcess(pool_size=0).start()
    kw = {"api_url": server.url, "api_key": server.api_key}
    try:
        print("unchanged rebuild (every step cached)...", flush=True)
        results["unchanged_rebuild"] = bench_rebuild(kw, 10 if QUICK else 30)
        print(f"cold create + echo + kill from a {BIG_MIB} MiB template vs base...", flush=True)
        results["big_template_start"] = bench_big_template_start(kw, 5 if QUICK else 20)
    finally:
        server.stop()
        server.remove_dirs()
    rb, big = results["unchanged_rebuild"], results["big_template_start"]
    rows = [
        ("unchanged rebuild (6 steps, CACHED)", f"{rb['p50_ms']} ms", f"{rb['p95_ms']} ms", "p50 <= 500 ms"),
        (f"cold start, {BIG_MIB} MiB template", f"{big['big']['p50_ms']} ms", f"{big['big']['p95_ms']} ms", "-"),
        ("cold start, base", f"{big['base']['p50_ms']} ms", f"{big['base']['p95_ms']} ms", "-"),
        ("  ratio (p50)", f"{big['ratio']}", "", "<= 1.10"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'scenario':<{width}}  {'p50 / value':>14}  {'p95':>10}  target")
    for name, a, b, target in rows:
        print(f"{name:<{width}}  {a:>14}  {b:>10}  {target}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"templates-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

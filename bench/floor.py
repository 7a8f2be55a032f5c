"""The floor: a bare bubblewrap start of `echo` on the same kind of overlay a sandbox gets."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path


def bare_bwrap_echo(rootfs: Path, runs: int = 30) -> list[float]:
    """Seconds from spawn to first output of `echo hi` in bwrap over tmpfs+overlay (setup and teardown excluded)."""
    samples = []
    base = Path(tempfile.mkdtemp(prefix="corral-bench-floor-", dir="/run"))
    try:
        for i in range(runs + 1):
            d = base / str(i)
            d.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "corral-bench", str(d)], check=True)
            for sub in ("upper", "work", "root"):
                (d / sub).mkdir()
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={rootfs},upperdir={d}/upper,workdir={d}/work", str(d / "root")], check=True,
            )
            try:
                t0 = time.perf_counter()
                p = subprocess.Popen(
                    ["bwrap", "--bind", str(d / "root"), "/", "--proc", "/proc", "--dev", "/dev",
                     "--unshare-all", "--die-with-parent", "/bin/echo", "hi"],
                    stdout=subprocess.PIPE,
                )
                assert p.stdout is not None
                line = p.stdout.readline()
                t1 = time.perf_counter()
                p.wait()
                assert line.strip() == b"hi", line
                if i:  # the first run warms caches
                    samples.append(t1 - t0)
            finally:
                subprocess.run(["umount", str(d / "root")], check=True)
                subprocess.run(["umount", str(d)], check=True)
                d.rmdir()
    finally:
        os.rmdir(base)
    return samples

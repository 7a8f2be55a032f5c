"""``python -m corral.backends.microvm prepare [--data-dir DIR] [--template NAME --templates-dir DIR]``:
fetch the guest kernel, build the initramfs, probe KVM; with a template, also its image and snapshot."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m corral.backends.microvm")
    sub = ap.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="kernel, initramfs and accelerator (cached); optionally a template's snapshot")
    prep.add_argument("--data-dir", type=Path, default=Path("/var/lib/corral"))
    prep.add_argument("--template", action="append", default=[], help="also make this template's image and snapshot")
    prep.add_argument("--templates-dir", type=Path, default=None)
    prep.add_argument("--memory-mb", type=int, default=512)
    prep.add_argument("--disk-mb", type=int, default=1024)
    gc = sub.add_parser("gc", help="remove snapshots and initramfs images of older agent or guest code")
    gc.add_argument("--data-dir", type=Path, default=Path("/var/lib/corral"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..base import Limits, SandboxSpec
    from .backend import MicroVMBackend

    backend = MicroVMBackend(data_dir=args.data_dir)
    version = backend.prepare()
    if args.cmd == "gc":
        from .snapshot import collect

        assert backend.initramfs is not None
        for path in collect(backend.root, backend.initramfs):
            print(f"removed {path}")
        return 0
    print(f"kernel {version}, initramfs {backend.initramfs}, accelerator {backend.accel}")
    if args.template:
        from ...templates.store import TemplateStore

        store = TemplateStore(args.templates_dir or args.data_dir / "templates")
        for name in args.template:
            res = store.resolve(name)
            spec = SandboxSpec(f"prepare-{secrets.token_hex(3)}", res.template_dir, layers=tuple(res.layers),
                               limits=Limits(memory_mb=args.memory_mb, disk_mb=args.disk_mb))  # fmt: skip
            snap = asyncio.run(backend.ensure_snapshot(spec))
            print(f"template {name}: snapshot {snap.dir}")
        asyncio.run(backend.close())  # its (empty) run dir
    return 0


if __name__ == "__main__":
    sys.exit(main())

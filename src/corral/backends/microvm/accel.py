"""KVM or TCG: KVM only when a real guest boots under it (a /dev/kvm may exist and still fail to run
one, as on hosts that are themselves VMs); the answer is cached per kernel and host kernel."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from . import qemu

log = logging.getLogger("corral.backends.microvm")
PROBE_TIMEOUT = 20.0


def kvm_boots(kernel: Path, initramfs: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot the guest kernel under KVM to stage 1's probe marker; (ok, what went wrong)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no /dev/kvm"
    argv = [
        qemu.QEMU, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults",
        "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
        "-initrd", str(initramfs), "-append", f"{qemu.CMDLINE} corral.probe",
    ]  # fmt: skip
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + " (timed out)"
    if "CORRAL-PROBE-OK" in out:
        return True, ""
    return False, out.strip()[-300:] or "no output"


def cached(root: Path) -> str | None:
    """The accelerator found by an earlier probe, if any (whatever kernel it was made with)."""
    try:
        return str(json.loads((root / "accel.json").read_text())["accel"])
    except (OSError, ValueError, KeyError):
        return None


def choose(root: Path, kernel: Path, initramfs: Path) -> str:
    cache = root / "accel.json"
    key = f"{kernel.parent.name} {os.uname().release}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            accel = str(cached["accel"])
            _say(accel, str(cached.get("why", "")))
            return accel
    except (OSError, ValueError, KeyError):
        pass
    ok, why = kvm_boots(kernel, initramfs)
    accel = "kvm" if ok else "tcg"
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "accel": accel, "why": why}))
    os.replace(tmp, cache)
    _say(accel, why)
    return accel


def _say(accel: str, why: str) -> None:
    if accel == "tcg":
        log.warning("microVMs run under TCG (software emulation): slow, not for production (KVM: %s)", why[-200:])

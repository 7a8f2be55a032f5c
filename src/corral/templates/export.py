"""Exporting a template to the form a backend needs.

The namespace backend takes a template as it is stored: its lower dirs, stacked by overlayfs.
A backend that boots a disk (a microVM) needs one image file: ``export_image`` mounts the
template's layers read-only, copies the merged view with its owners shifted back to the ids the
image itself uses (a VM has no user namespace to map them), and makes an ext4 image of it with
``mkfs.ext4 -d``. Images are cached by the template's top layer key under ``exports/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..backends.namespace.overlay import MS_NODEV, MS_NOSUID, mount, overlay_options, umount_retry
from ..errors import UnavailableError
from .shift import HOST_UID_BASE, ID_RANGE
from .store import Resolved, TemplateStore

MS_RDONLY = 0x1


def lower_dirs(res: Resolved) -> list[Path]:
    """The template's dirs, topmost first (the namespace backend's form)."""
    return [*reversed(res.layers), res.template_dir]


def export_image(store: TemplateStore, res: Resolved, headroom_mb: int = 256) -> Path:
    """An ext4 image file of the template (made once per template build, then reused)."""
    out = store.root / "exports" / f"{res.key or res.name}.ext4"
    return export_lower_dirs(lower_dirs(res), out, headroom_mb)


def export_lower_dirs(lowers: list[Path], out: Path, headroom_mb: int = 256, label: str = "corral-root") -> Path:
    """An ext4 image at ``out`` of the overlay of ``lowers`` (topmost first), unless it exists."""
    if shutil.which("mkfs.ext4") is None:
        raise UnavailableError("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        view, copy = Path(tmp) / "view", Path(tmp) / "copy"
        view.mkdir()
        lowers = list(lowers)
        if len(lowers) == 1:
            lowers.append(Path(tmp) / "empty")  # a read-only overlay needs two lower dirs
            lowers[-1].mkdir()
        # SECURITY: read-only, nosuid, nodev: the export only reads the template.
        mount("corral-export", view, "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, overlay_options(lowers, None, None))
        try:
            subprocess.run(["cp", "-a", f"{view}/.", str(copy)], check=True, capture_output=True)
        finally:
            umount_retry(view)
        _unshift(copy)
        # What the files take on disk (4 KiB blocks, not their sizes: a root has many small files).
        du = subprocess.run(["du", "-s", "--block-size=1M", str(copy)], check=True, capture_output=True, text=True)
        used_mb = int(du.stdout.split()[0])
        image = Path(tmp) / "image.ext4"
        mkfs = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(copy), str(image), f"{used_mb * 5 // 4 + headroom_mb}M"],
            capture_output=True, text=True,
        )  # fmt: skip
        if mkfs.returncode != 0:
            raise UnavailableError(f"mkfs.ext4 of the template failed: {mkfs.stderr.strip()[-500:]}")
        os.replace(image, out)
    return out


def _back(host_id: int) -> int:
    return host_id - HOST_UID_BASE if HOST_UID_BASE <= host_id < HOST_UID_BASE + ID_RANGE else host_id


def _unshift(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in (*filenames, *dirnames))]:
            st = os.lstat(name)
            if HOST_UID_BASE <= st.st_uid < HOST_UID_BASE + ID_RANGE or HOST_UID_BASE <= st.st_gid < HOST_UID_BASE + ID_RANGE:
                mode = st.st_mode & 0o7777
                os.lchown(name, _back(st.st_uid), _back(st.st_gid))
                if not os.path.islink(name) and mode & 0o6000:
                    os.chmod(name, mode)  # chown cleared setuid/setgid: restore them

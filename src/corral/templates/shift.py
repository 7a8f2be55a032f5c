"""Shift a root filesystem's file owners into the sandbox uid range.

Root inside a sandbox is host uid HOST_UID_BASE (an unprivileged uid); for it to own its files,
a template's owners are stored shifted by that base. Done once per template build.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

HOST_UID_BASE = 100000
ID_RANGE = 65536


def shift_owners(root: Path, base: int = HOST_UID_BASE) -> int:
    """Add ``base`` to every uid and gid below ``ID_RANGE`` under ``root``; return the count changed."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        names = [dirpath, *(os.path.join(dirpath, n) for n in filenames)]
        # os.walk does not descend into symlinked dirs; they still need their own owner shifted.
        names += [os.path.join(dirpath, n) for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        for path in names:
            st = os.lstat(path)
            if st.st_uid >= ID_RANGE and st.st_gid >= ID_RANGE:
                continue
            # SECURITY: chown clears setuid/setgid bits; restore exactly the bits the package shipped.
            os.lchown(path, st.st_uid % ID_RANGE + base, st.st_gid % ID_RANGE + base)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o6000:
                os.chmod(path, stat.S_IMODE(st.st_mode))
            changed += 1
    return changed

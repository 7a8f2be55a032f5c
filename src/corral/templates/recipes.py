"""Template recipes: what goes into a template's root filesystem.

A recipe is plain data. Its hash (with the builder version) names the cached build, so a
template is rebuilt only when its recipe changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

# Bump when the build procedure itself changes in a way that alters the result.
BUILDER_VERSION = 3


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    # Shell commands run in the new root (chroot) at the end of the build, as root.
    customize: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # path inside -> content

    def digest(self) -> str:
        blob = json.dumps({"v": BUILDER_VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


BASE = Recipe(
    name="base",
    packages=(
        "bash", "coreutils", "procps", "python3", "python3-pip", "python3-venv", "nodejs", "npm",
        "git", "curl", "ca-certificates", "less", "iproute2", "iputils-ping",
    ),
    customize=(
        "useradd --create-home --uid 1000 --user-group --shell /bin/bash user",
        "mkdir -p /run/corral /usr/local/lib/corral",
        # Mid-session `pip install` works like on E2B (Debian marks the system Python as externally managed).
        "rm -f /usr/lib/python3*/EXTERNALLY-MANAGED",
        # Commands run in a login shell (as E2B's do); bash knows its EUID, so /etc/profile need not
        # fork `id -u` for every command (a third of a command's round trip). dash still forks it.
        """sed -i 's/"$(id -u)"/"${EUID:-$(id -u)}"/' /etc/profile""",
    ),
    files={
        "/etc/pip.conf": "[global]\nbreak-system-packages = true\ndisable-pip-version-check = true\n",
        "/etc/hostname": "sandbox\n",
    },
)

RECIPES: dict[str, Recipe] = {"base": BASE}

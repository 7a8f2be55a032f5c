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

# The code interpreter: base plus Jupyter kernels for Python, JavaScript/TypeScript (tslab),
# Bash (bash_kernel) and R (IRkernel, from Debian), and the usual data-science libraries. The
# marker file tells the agent to start corral's interpreter server (agent/daemon/interpreter.py)
# in the background when the sandbox starts, so the default Python kernel is warm.
PYTHON_LIBRARIES = (
    "ipykernel", "jupyter_client", "numpy", "pandas", "matplotlib", "scipy", "scikit-learn",
    "seaborn", "plotly", "openpyxl", "requests", "beautifulsoup4", "bash_kernel",
)
CODE_INTERPRETER = Recipe(
    name="code-interpreter",
    packages=(*BASE.packages, "r-base-core", "r-cran-irkernel"),
    customize=(
        *BASE.customize,
        "pip install --no-cache-dir --quiet " + " ".join(PYTHON_LIBRARIES),
        "python3 -m ipykernel install --prefix /usr/local --name python3 --display-name Python",
        "python3 -m bash_kernel.install --prefix /usr/local",
        "npm install --global --no-audit --no-fund --loglevel=error tslab && tslab install --prefix /usr/local",
        "R --quiet --no-echo -e 'IRkernel::installspec(user = FALSE, name = \"ir\", displayname = \"R\")'",
        # Charts come back as PNG without show() (ipykernel's inline backend); no font cache
        # build on the first plot of every sandbox.
        "su user -c 'python3 -c \"import matplotlib.pyplot\"'",
        "npm cache clean --force >/dev/null 2>&1; rm -rf /root/.cache /tmp/*",
    ),
    files={**BASE.files, "/etc/corral/code-interpreter": "python javascript typescript bash r\n"},
)

RECIPES: dict[str, Recipe] = {"base": BASE, "code-interpreter": CODE_INTERPRETER}

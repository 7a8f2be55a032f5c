"""Builds template root filesystems with mmdebstrap and caches them by recipe hash.

Layout under the templates dir::

    <name>/<digest>/rootfs      the root filesystem, owners shifted into the sandbox uid range
    <name>/current.json         {"name", "digest", "rootfs", "built_at", "build_seconds"}

A build goes to a temporary dir next to the final one and is renamed into place only when it
succeeded, so a failed or interrupted build never registers half a template.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import TemplateNotFoundError
from .recipes import RECIPES, Recipe
from .shift import shift_owners

Progress = Callable[[str], None]

DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
)

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_CA_BUNDLE = "/etc/corral-build-ca.crt"  # inside the new root, during customize steps only
CA_VARIABLES = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


def template_path(templates_dir: Path, name: str) -> Path:
    """The root filesystem of a built template, or TemplateNotFoundError."""
    meta = templates_dir / name / "current.json"
    try:
        rootfs = Path(json.loads(meta.read_text())["rootfs"])
    except (OSError, ValueError, KeyError):
        raise TemplateNotFoundError(f"template {name!r} is not built") from None
    if not rootfs.is_dir():
        raise TemplateNotFoundError(f"template {name!r} is missing its root filesystem")
    return rootfs


def list_templates(templates_dir: Path) -> list[dict]:
    out = []
    for meta in sorted(templates_dir.glob("*/current.json")):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue
    return out


def ensure_template(templates_dir: Path, name: str = "base", progress: Progress | None = None) -> Path:
    """Return the template's rootfs, building it first when its recipe changed or it is missing."""
    recipe = RECIPES.get(name)
    if recipe is None:
        return template_path(templates_dir, name)
    digest = recipe.digest()
    final = templates_dir / name / digest / "rootfs"
    if final.is_dir() and (templates_dir / name / "current.json").exists():
        try:
            if json.loads((templates_dir / name / "current.json").read_text())["digest"] == digest:
                return final
        except (OSError, ValueError, KeyError):
            pass
    return build(templates_dir, recipe, progress=progress)


def build(templates_dir: Path, recipe: Recipe, progress: Progress | None = None) -> Path:
    say = progress or (lambda line: None)
    digest = recipe.digest()
    home = templates_dir / recipe.name
    home.mkdir(parents=True, exist_ok=True)
    final_dir = home / digest
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=home))
    rootfs = work / "rootfs"
    started = time.monotonic()
    try:
        _mmdebstrap(recipe, rootfs, say)
        say("shifting file owners into the sandbox uid range")
        shift_owners(rootfs)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        work.rename(final_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    elapsed = time.monotonic() - started
    meta = {
        "name": recipe.name,
        "digest": digest,
        "rootfs": str(final_dir / "rootfs"),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(elapsed, 1),
    }
    tmp = home / "current.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.rename(home / "current.json")
    # Older builds go, unless a running sandbox still has one as a lower dir of its overlay or a
    # template built from a Dockerfile stacks its layers on it.
    from .store import TemplateStore

    in_use = Path("/proc/mounts").read_text()
    stacked = TemplateStore(templates_dir).referenced_dirs()
    for old in home.iterdir():
        stale = old.is_dir() and old.name != digest and not old.name.startswith(".build-")
        if stale and str(old / "rootfs") not in in_use and str(old / "rootfs") not in stacked:
            shutil.rmtree(old, ignore_errors=True)
    say(f"template {recipe.name} built in {elapsed:.0f} s")
    return final_dir / "rootfs"


def _mmdebstrap(recipe: Recipe, rootfs: Path, say: Progress) -> None:
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    hooks: list[str] = []
    for path, content in recipe.files.items():
        # printf with %s keeps the content literal; the path is ours (recipes are code, not input).
        hooks.append(f"--customize-hook=mkdir -p \"$1{os.path.dirname(path)}\" && printf '%s' {_sh_quote(content)} > \"$1{path}\"")
    # Build steps download with the host's trust store (a proxy that re-signs TLS, as in many
    # companies, is trusted by the host, not by the new root) and a clean environment.
    env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]  # fmt: skip
    if recipe.customize and Path(HOST_CA_BUNDLE).is_file():
        hooks.append(f"--customize-hook=cp {HOST_CA_BUNDLE} \"$1{BUILD_CA_BUNDLE}\"")
        env += [f"{var}={BUILD_CA_BUNDLE}" for var in CA_VARIABLES]
    for cmd in recipe.customize:
        hooks.append(f"--customize-hook=chroot \"$1\" {' '.join(env)} sh -c {_sh_quote(cmd)}")
    if recipe.customize:
        hooks.append(f"--customize-hook=rm -f \"$1{BUILD_CA_BUNDLE}\"")
    argv = [
        "mmdebstrap",
        f"--variant={recipe.variant}",
        "--mode=root",
        "--format=directory",
        f"--include={','.join(recipe.packages)}",
        *[f"--dpkgopt={opt}" for opt in DPKG_OPTS],
        *hooks,
        recipe.suite,
        str(rootfs),
    ]
    say(f"building template {recipe.name} with mmdebstrap ({len(recipe.packages)} packages); this takes a minute or two, once")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-40:], line]
        if line.startswith(("I:", "E:", "W:")):
            say(line)
    if proc.wait() != 0:
        raise RuntimeError(f"mmdebstrap failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _progress_printer() -> Progress:
    started = time.monotonic()

    def say(line: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - started:5.1f}s] {line}\n")
        sys.stderr.flush()

    return say

"""A local OCI registry (Debian's docker-registry) on a loopback port, and images pushed into it
with umoci and skopeo from root filesystems the tests build (no Docker engine anywhere)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from helpers import free_port, wait_until

ROOTFS_CACHE = Path("/var/tmp/corral-test-oci")
MINI_PACKAGES = ("python3-minimal", "libpython3.11-stdlib")


class Registry:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="corral-registry-"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        config = self.dir / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.dir / 'data'}\nhttp:\n  addr: {self.host}\n"
        )
        with open(self.dir / "log", "wb") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=log)
        wait_until(self._up, timeout=30, what=f"docker-registry on {self.host}")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"docker-registry exited: {(self.dir / 'log').read_text()[-2000:]}")
        try:
            return httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def push_rootfs(
        self, rootfs_tar: Path | None, repo: str, tag: str, files: dict[str, str] | None = None,
        config: list[str] | None = None,
    ) -> str:  # fmt: skip
        """Make an OCI image of a root filesystem tarball (and/or a few files) and push it as repo:tag.

        ``config`` are ``umoci config`` flags, e.g. ``--config.env=FOO=bar``."""
        with tempfile.TemporaryDirectory(prefix="corral-image-") as tmp:
            layout, bundle = f"{tmp}/layout", f"{tmp}/bundle"
            run(["umoci", "init", "--layout", layout])
            run(["umoci", "new", "--image", f"{layout}:{tag}"])
            run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle])
            if rootfs_tar is not None:
                run(["tar", "-xf", str(rootfs_tar), "-C", f"{bundle}/rootfs"])
            for rel, text in (files or {}).items():
                path = Path(bundle, "rootfs", rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            run(["umoci", "repack", "--image", f"{layout}:{tag}", bundle])
            if config:
                run(["umoci", "config", "--image", f"{layout}:{tag}", *config])
            ref = f"{self.host}/{repo}:{tag}"
            run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{ref}"])
        return ref


def mini_rootfs_tar() -> Path:
    """A small Debian root filesystem (minbase + python3) as a tarball, built once with mmdebstrap."""
    key = hashlib.sha256(repr(MINI_PACKAGES).encode()).hexdigest()[:12]
    tar = ROOTFS_CACHE / f"mini-{key}.tar"
    if not tar.exists():
        ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = tar.with_suffix(".tmp")
        run(["mmdebstrap", "--variant=minbase", f"--include={','.join(MINI_PACKAGES)}", "--mode=root",
             "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
             "--dpkgopt=path-exclude=/usr/share/locale/*", "--format=tar", "bookworm", str(tmp)], timeout=900)  # fmt: skip
        tmp.rename(tar)
    return tar


def run(argv: list[str], timeout: float = 300) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {proc.stderr[-2000:]}")

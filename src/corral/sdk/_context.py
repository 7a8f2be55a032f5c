"""Build contexts for template builds: a directory (minus what .dockerignore excludes) and the
files the Python builder API copies, as one tar file (used by both the async core and its twin)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from corral.dockerignore import DockerIgnore

GENERATED_DOCKERFILE = ".corral/Dockerfile"


def context_tar(
    context_dir: str | os.PathLike[str] | None,
    dockerfile: str = "Dockerfile",
    extra_files: dict[str, str] | None = None,
    dockerfile_text: str | None = None,
) -> IO[bytes]:
    """A temporary file holding the context tar, positioned at 0 (the caller closes it).

    ``extra_files`` maps names in the context to local paths (files or dirs); ``dockerfile_text``
    is written as ``.corral/Dockerfile``.
    """
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (returned open, closed by the caller)
    with tarfile.open(fileobj=spool, mode="w") as tar:
        if context_dir is not None:
            root = Path(context_dir)
            if not root.is_dir():
                raise FileNotFoundError(f"build context {root} is not a directory")
            ignore = DockerIgnore.of(root)
            names = set(ignore.walk(root))
            names.add(dockerfile.lstrip("/"))
            for name in sorted(names):
                if os.path.lexists(root / name):
                    tar.add(root / name, arcname=name, recursive=False)
        for name, local in (extra_files or {}).items():
            tar.add(local, arcname=name, recursive=True)
        if dockerfile_text is not None:
            data = dockerfile_text.encode()
            info = tarfile.TarInfo(GENERATED_DOCKERFILE)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    spool.seek(0)
    return spool

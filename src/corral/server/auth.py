"""API key: from settings, or generated on first start and kept (mode 0600) in the data dir."""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path

from ..errors import AuthenticationError

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
# Signed file URLs carry their own authorization (an HMAC in the query, checked by the route).
SIGNED_PATH = re.compile(r"/v1/sandboxes/[A-Za-z0-9_-]+/files/signed")
SIGNED_METHODS = frozenset({"GET", "PUT"})


def is_open(method: str, path: str) -> bool:
    """Whether a request goes through without the API key."""
    return path in OPEN_PATHS or (method in SIGNED_METHODS and SIGNED_PATH.fullmatch(path) is not None)


def load_or_create_key(data_dir: Path, configured: str | None) -> tuple[str, bool]:
    """Return (key, created_now)."""
    if configured:
        return configured, False
    path = data_dir / "api_key"
    try:
        key = path.read_text().strip()
        if key:
            return key, False
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "corral_" + secrets.token_urlsafe(32)
    # SECURITY: the key file is created 0600 from the start (no window where others could read it).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def check_key(expected: str, headers: dict[str, str]) -> None:
    given = headers.get("x-api-key")
    if given is None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
    if not given:
        raise AuthenticationError("missing API key: send it in the X-API-Key header")
    # SECURITY: constant-time comparison, so the key cannot be guessed byte by byte from timings.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthenticationError("invalid API key")

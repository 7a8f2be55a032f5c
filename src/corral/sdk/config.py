"""Where the SDK finds corral: arguments first, then ``CORRAL_*`` environment variables."""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass

DEFAULT_API_URL = "http://127.0.0.1:49982"
DEFAULT_REQUEST_TIMEOUT = 60.0
# The server sends a keepalive event every 10 s of silence on a command stream; a stream
# silent for this long is dead.
STREAM_READ_TIMEOUT = 45.0


@dataclass(frozen=True)
class ConnectionConfig:
    api_url: str
    api_key: str | None
    request_timeout: float

    @classmethod
    def resolve(
        cls,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        url = api_url or base_url or os.environ.get("CORRAL_API_URL") or DEFAULT_API_URL
        key = api_key if api_key is not None else os.environ.get("CORRAL_API_KEY") or None
        return cls(
            api_url=url.rstrip("/"),
            api_key=key,
            request_timeout=DEFAULT_REQUEST_TIMEOUT if request_timeout is None else float(request_timeout),
        )

    def headers(self) -> dict[str, str]:
        from corral import __version__

        headers = {"User-Agent": f"corral-python/{__version__}"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    @property
    def stream_read_timeout(self) -> float:
        return max(self.request_timeout, STREAM_READ_TIMEOUT)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (~20 ms), too slow per sandbox."""
    return ssl.create_default_context()

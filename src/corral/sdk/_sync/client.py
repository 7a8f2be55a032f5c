# generated from _async by scripts/gen_sync.py, do not edit
"""One HTTP connection pool to corral: JSON requests and streamed answers, errors mapped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from corral.sdk._errors import error_from_response, transport_errors
from corral.sdk.config import ConnectionConfig, shared_ssl_context

Content = bytes | Iterable[bytes] | None
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ApiClient:
    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._http = httpx.Client(
            base_url=config.api_url,
            headers=config.headers(),
            timeout=httpx.Timeout(config.request_timeout),
            verify=shared_ssl_context(),
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: Content = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer (None when it has no body)."""
        with transport_errors(self.config.api_url):
            try:
                resp = self._http.request(
                    method, path, json=json, params=params, content=content, headers=headers
                )
            except httpx.RemoteProtocolError:
                # A kept-alive connection the server closed just as we reused it: the request was
                # not answered. Idempotent requests are sent once more, on a fresh connection.
                if method not in IDEMPOTENT or not (content is None or isinstance(content, bytes)):
                    raise
                resp = self._http.request(
                    method, path, json=json, params=params, content=content, headers=headers
                )
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, resp.content)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def open_stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        read_timeout: float | None = None,
        content: Content = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request and return its answer unread (checked: errors are raised here).

        The caller owns the response and must close it (``iter_stream`` does when it ends).
        """
        timeout = httpx.Timeout(self.config.request_timeout, read=read_timeout or self.config.request_timeout)
        request = self._http.build_request(
            method, path, json=json, params=params, timeout=timeout, content=content, headers=headers
        )
        with transport_errors(self.config.api_url):
            resp = self._http.send(request, stream=True)
        if resp.status_code >= 400:
            try:
                with transport_errors(self.config.api_url):
                    content = resp.read()
            finally:
                resp.close()
            raise error_from_response(resp.status_code, content)
        return resp

    def iter_bytes(self, resp: httpx.Response) -> Iterator[bytes]:
        """The body of an open response chunk by chunk; closes it when done or abandoned."""
        try:
            with transport_errors(self.config.api_url):
                yield from resp.iter_bytes()
        finally:
            resp.close()

    def iter_lines(self, resp: httpx.Response) -> Iterator[str]:
        """The body of an open response line by line; closes it when done or abandoned."""
        try:
            with transport_errors(self.config.api_url):
                yield from resp.iter_lines()
        finally:
            resp.close()

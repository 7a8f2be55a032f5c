"""Test-only name resolution for the host-name routing tests (put this directory on PYTHONPATH).

With ``CORRAL_TEST_RESOLVE=corral.test=127.0.0.1:PORT``, every name under ``corral.test`` (any
port) resolves to that address and port, as a wildcard DNS record and a listener on 443 would;
``SSL_CERT_FILE`` then is also the CA that httpcore trusts by default. Nothing else changes.
"""

import os
import socket

_spec = os.environ.get("CORRAL_TEST_RESOLVE")
if _spec:
    _domain, _, _target = _spec.partition("=")
    _host, _, _port = _target.rpartition(":")
    _getaddrinfo = socket.getaddrinfo

    def _resolve(name, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(name, bytes):
            name = name.decode()
        if isinstance(name, str) and (name == _domain or name.endswith("." + _domain)):
            return _getaddrinfo(_host, int(_port), *args, **kwargs)
        return _getaddrinfo(name, port, *args, **kwargs)

    socket.getaddrinfo = _resolve
    _ca = os.environ.get("SSL_CERT_FILE")
    if _ca:
        import certifi

        certifi.where = lambda: _ca

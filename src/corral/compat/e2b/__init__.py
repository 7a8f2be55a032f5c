"""E2B wire compatibility: the official e2b SDKs, pointed at corral by environment variables,
work unchanged. See docs/e2b.md.

    routing.py      which requests are E2B's (headers, host names, presigned URLs, API paths)
    control.py      the control-plane REST API (/sandboxes, /v2/sandboxes, /templates)
    live.py         which sandboxes run (through the manager)
    envd.py         sandbox port 49983: token check, /health, dispatch to the services below
    connect.py      the Connect protocol (JSON codec): unary calls, envelopes, streams, errors
    process.py      process.Process: Start, Connect, List, SendInput, StreamInput, SendSignal, ...
    filesystem.py   filesystem.Filesystem: Stat, MakeDir, Move, ListDir, Remove, watching
    files.py        /files download and upload, v1 signatures
    interpreter.py  sandbox port 49999 (the code interpreter): not served yet (501)
"""

from .routing import E2BCompat

__all__ = ["E2BCompat"]

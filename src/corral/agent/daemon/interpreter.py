"""Op ``code``: relay a request to the code interpreter server (``kernel_server/``).

The kernel server needs jupyter_client, so it is not part of the agent: it is a separate
process, started in the background when the sandbox starts (templates that ship it carry the
marker file ``/etc/corral/code-interpreter``) and started again on the next request if it went
away. The agent connects to its socket inside the sandbox, writes the request as one JSON line
and relays each answer line as a J frame. When the host goes away the relay closes the server's
connection, which interrupts a running cell.
"""

import os
import select
import threading
import time

from .processes import CONFIG
from .wire import K_JSON, AgentError, frame, json_dumps, log

MARKER = "/etc/corral/code-interpreter"
SOCKET = "/run/corral/kernels.sock"
LOG = "/run/corral/kernels.log"
SERVER_DIR = "/usr/local/lib/corral/agent/kernel_server"  # where the backend mounts the agent's directory
START_TIMEOUT = 60.0
MAX_LINE = 256 << 20  # one answer line (a large image is a few MB of base64)

_lock = threading.Lock()
_server = None  # the kernel server's Popen


def available():
    return os.path.exists(MARKER)


def start():
    """Start the kernel server unless it runs; returns at once (it becomes ready on its own)."""
    global _server
    import subprocess

    with _lock:
        if _server is not None and _server.poll() is None:
            return
        fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "LANG": "C.UTF-8", "JUPYTER_PLATFORM_DIRS": "1"}  # fmt: skip
            _server = subprocess.Popen(
                ["/usr/bin/python3", SERVER_DIR, "--socket", SOCKET],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env, cwd="/", start_new_session=True,
            )
        finally:
            os.close(fd)
        log(f"kernel server started (pid {_server.pid})")


def start_in_background():
    if available():
        threading.Thread(target=start, daemon=True).start()


def _connect():
    import socket

    deadline = time.monotonic() + START_TIMEOUT
    started = False
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(SOCKET)
            return s
        except OSError as e:
            s.close()
            error = e
        with _lock:
            running = _server is not None and _server.poll() is None
        if not running:
            if started:
                raise AgentError("unavailable", f"the code interpreter failed to start (see {LOG})")
            start()
            started = True
        if time.monotonic() > deadline:
            raise AgentError("unavailable", f"the code interpreter is not answering: {error}")
        time.sleep(0.05)


def op_code(conn, req):
    if not available():
        raise AgentError("not_supported", "this sandbox's template has no code interpreter (use code-interpreter)")
    request = req.get("request")
    if not isinstance(request, dict):
        raise AgentError("invalid_request", "field request must be an object")
    request = dict(request)
    request["sandbox_envs"] = CONFIG.get("envs") or {}
    s = _connect()
    try:
        s.sendall(json_dumps(request).encode("ascii") + b"\n")
        buf = bytearray()
        while True:
            ready, _, _ = select.select([s, conn.sock], [], [])
            if conn.sock in ready:
                return  # the host went away (or broke the protocol): closing s interrupts the cell
            data = s.recv(1 << 20)
            if not data:
                break
            buf += data
            start = 0
            while True:
                end = buf.find(b"\n", start)
                if end < 0:
                    break
                if end > start:
                    conn.send(frame(K_JSON, bytes(buf[start:end])))
                start = end + 1
            del buf[:start]
            if len(buf) > MAX_LINE:
                raise AgentError("internal", "the code interpreter sent an over-long line")
        if buf.strip():
            conn.send(frame(K_JSON, bytes(buf)))
    finally:
        s.close()

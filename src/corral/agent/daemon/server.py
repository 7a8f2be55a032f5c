"""The server: the listening socket, the accept loop (a thread per connection), request
dispatch and the preload of what requests need, off the start-up path."""

import _socket
import _thread
import os
import time

from . import files, interpreter, processes
from .users import _libc
from .watch import op_watch
from .wire import (
    K_JSON,
    VERSION,
    AgentError,
    ClientGone,
    Conn,
    invalid,
    json_frame,
    json_loads,
    log,
    log_exception,
    os_error,
)


def op_ping(conn, req):
    conn.send_json({"ok": True, "pid": os.getpid(), "version": VERSION})


OPS = {
    "ping": op_ping,
    "configure": processes.op_configure,
    "exec": processes.op_exec,
    "connect": processes.op_connect,
    "list": processes.op_list,
    "stdin": processes.op_stdin,
    "close_stdin": processes.op_close_stdin,
    "signal": processes.op_signal,
    "resize": processes.op_resize,
    "read": files.op_read,
    "write": files.op_write,
    "read_tar": files.op_read_tar,
    "list_dir": files.op_list_dir,
    "stat": files.op_stat,
    "mkdir": files.op_mkdir,
    "remove": files.op_remove,
    "rename": files.op_rename,
    "watch": op_watch,
    "code": interpreter.op_code,
}


_PRELOADED = False


def enable_identity():
    """The ``identity`` op (``--identity``: a microVM's agent only)."""
    from .identity import op_identity

    OPS["identity"] = op_identity


def preload():
    """Import what exec and file operations need, off the start-up path."""
    global _PRELOADED
    if _PRELOADED:
        return
    _PRELOADED = True
    try:
        import binascii  # noqa: F401
        import grp  # noqa: F401
        import pwd  # noqa: F401
        import select  # noqa: F401
        import stat  # noqa: F401
        import subprocess  # noqa: F401
        import threading  # noqa: F401

        if os.geteuid() == 0:
            _libc()
    except Exception:
        log_exception("preload")


class _NullConn:
    """A connection that discards what is sent (warm())."""

    def send(self, data):
        pass

    def send_json(self, obj):
        json_frame(obj)


def warm():
    """Preload, then run one throwaway command through exec's own path (``--warm``: a microVM's
    agent does this before its guest is snapshotted, so every restored guest finds the modules
    imported and the files an exec reads in its page cache)."""
    preload()
    login = {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}  # how the host runs commands (E2B's semantics)
    for req in (login, {**login, "user": "root"}):
        try:
            json_loads('{"op": "exec"}')
            processes.op_exec(_NullConn(), req)
        except Exception as e:
            log(f"warm-up: {type(e).__name__}: {e}")


def handle(sock):
    conn = Conn(sock)
    try:
        try:
            fr = conn.read_frame()
            if fr is None:
                return
            kind, payload = fr
            if kind != K_JSON:
                raise invalid("the request must be a J frame")
            try:
                req = json_loads(payload.decode("utf-8"))
            except Exception as e:
                raise invalid(f"malformed JSON request: {e}") from None
            if not isinstance(req, dict):
                raise invalid("the request must be a JSON object")
            op = req.get("op")
            fn = OPS.get(op) if isinstance(op, str) else None
            if fn is None:
                raise invalid(f"unknown op: {op!r}")
            fn(conn, req)
        except AgentError as e:
            conn.send_error(e.code, e.message)
        except OSError as e:
            err = os_error(e)
            conn.send_error(err.code, err.message)
        except ClientGone:
            pass
        except RecursionError:
            conn.send_error("invalid_request", "too deeply nested")
        except Exception as e:
            log_exception("request failed")
            conn.send_error("internal", f"{type(e).__name__}: {e}")
    except ClientGone:
        pass
    except Exception:
        log_exception("handler")
    finally:
        try:
            sock.close()
        except OSError:
            pass
        if not _PRELOADED:
            preload()


def listen(path):
    """The agent's socket: a unix socket path, or ``tcp:ADDRESS:PORT`` (backends whose sandbox
    has its own kernel reach the agent over the sandbox's network)."""
    if path.startswith("tcp:"):
        host, _, port = path[4:].rpartition(":")
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
        return sock
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def serve(sock, allow_peer=None):
    """Accept connections for ever, one thread each. On TCP, ``allow_peer`` is the one address
    connections may come from (the host's end of the sandbox's link)."""
    tcp = sock.family == _socket.AF_INET
    while True:
        try:
            fd, addr = sock._accept()
        except InterruptedError:
            continue
        except OSError as e:
            log(f"accept failed: {e}")
            time.sleep(0.05)
            continue
        conn = _socket.socket(sock.family, _socket.SOCK_STREAM, 0, fd)
        if tcp:
            # SECURITY: only the host may drive the agent; a process inside the sandbox
            # connecting to its own address (or loopback) has another source address.
            if allow_peer is not None and addr[0] != allow_peer:
                log(f"refused a connection from {addr[0]}")
                conn.close()
                continue
            conn.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        try:
            _thread.start_new_thread(handle, (conn,))
        except RuntimeError as e:
            log(f"cannot start a thread: {e}")
            conn.close()

"""Process operations: configure (sandbox-wide env), exec (optionally on a terminal), connect,
list, stdin, close_stdin, signal and resize."""

import os
import time

from . import terminal
from .proc import PROCS, PROCS_LOCK, Proc
from .users import get_user, user_groups
from .wire import AgentError, ClientGone, f_envs, f_int, f_str, invalid, os_error

ENDED_KEEP = 60.0  # seconds an ended process is remembered for connect
ENDED_OUTPUT_BUDGET = 16 << 20  # output kept in total for ended processes

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Tools with a CA bundle of their own (requests' certifi, node) use the system's, which the
# backend fills with the host's certificates: a TLS-inspecting proxy the host trusts works inside.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_ENV = {var: CA_BUNDLE for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")}

# Sandbox-wide state set by "configure".
CONFIG: dict = {"envs": {}, "hostname": None}


def op_configure(conn, req):
    envs = f_envs(req, "envs")
    hostname = f_str(req, "hostname", allow_empty=True)
    CONFIG["envs"] = dict(envs)
    CONFIG["hostname"] = hostname
    conn.send_json({"ok": True})


def _purge():
    """Forget processes ended long ago; cap the output kept for ended ones (newest first)."""
    now = time.monotonic()
    with PROCS_LOCK:
        ended = []
        for pid, p in list(PROCS.items()):
            if p.finished:
                if now - p.ended_at > ENDED_KEEP:
                    del PROCS[pid]
                else:
                    ended.append(p)
    budget = ENDED_OUTPUT_BUDGET
    for p in sorted(ended, key=lambda p: p.ended_at, reverse=True):
        with p.cv:
            if budget >= p.cost or p.subs:
                budget -= p.cost
            elif p.chunks:
                p.chunks.clear()  # connect still answers start + end, without replay
                p.cost = 0


def _get_proc(req, running=True):
    pid = f_int(req, "pid", required=True)
    p = PROCS.get(pid)
    if p is None or (running and p.exited.is_set()):
        raise AgentError("process_not_found", f"no running process with pid {pid}")
    return p


_SETGROUPS_OK = None


def _setgroups_allowed():
    global _SETGROUPS_OK
    if _SETGROUPS_OK is None:
        try:
            with open("/proc/self/setgroups") as f:
                _SETGROUPS_OK = f.read().strip() != "deny"
        except OSError:
            _SETGROUPS_OK = True
    return _SETGROUPS_OK


def op_exec(conn, req):
    cmd = f_str(req, "cmd", required=True)
    args = req.get("args")
    if args is None:
        args = []
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a for a in args):
        raise invalid("field args must be a list of strings")
    envs = f_envs(req, "envs")
    pw = get_user(req)
    cwd = f_str(req, "cwd")
    timeout = req.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise invalid("field timeout must be a positive number or null")
    want_stdin = req.get("stdin", False)
    if not isinstance(want_stdin, bool):
        raise invalid("field stdin must be a boolean")
    tag = req.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise invalid("field tag must be a string or null")
    size = terminal.parse_size(req) if req.get("pty") is not None else None

    home = pw.pw_dir or "/"
    if cwd is None:
        # Popen changes directory before switching users: check with the agent's own rights.
        cwd = home if os.path.isdir(home) and os.access(home, os.X_OK) else "/"
    elif not cwd.startswith("/"):
        cwd = os.path.join(home, cwd)
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": home,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "SHELL": pw.pw_shell or "/bin/sh",
    }
    if size is not None:
        env.update(TERM="xterm-256color", LANG="C.UTF-8")
    if os.path.exists(CA_BUNDLE):
        env.update(CA_ENV)
    env.update(CONFIG["envs"])
    env.update(envs)

    uid, gid, groups = pw.pw_uid, pw.pw_gid, user_groups(pw)
    kw = {}
    if uid != os.geteuid() or gid != os.getegid():
        kw["user"] = uid
        kw["group"] = gid
    if set(groups) != set(os.getgroups()) and os.geteuid() == 0 and _setgroups_allowed():
        kw["extra_groups"] = groups
    _purge()
    info = {"pid": 0, "cmd": cmd, "args": args, "cwd": cwd, "tag": tag, "user": pw.pw_name}
    if size is not None:
        proc = terminal.spawn([cmd, *args], size[0], size[1], info, timeout, cwd=cwd, env=env, **kw)
        info["pid"] = proc.pid
    else:
        proc = _spawn_piped([cmd, *args], want_stdin, info, timeout, cwd=cwd, env=env, **kw)
    sub = proc.subscribe()  # before any output can be produced: nothing is lost
    with PROCS_LOCK:
        PROCS[proc.pid] = proc
    proc.start()
    _answer(conn, proc, sub)


def _answer(conn, proc, sub):
    """The start event, then the subscriber's output and the end event."""
    try:
        conn.send_json({"type": "start", "pid": proc.pid})
    except ClientGone:
        proc.unsubscribe(sub)
        raise
    proc.stream(conn, sub)


def _spawn_piped(argv, want_stdin, info, timeout, **kw):
    import subprocess

    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
            **kw,
        )
    except OSError as e:
        raise os_error(e) from None
    except (ValueError, subprocess.SubprocessError) as e:
        raise invalid(f"cannot start {argv[0]}: {e}") from None
    info["pid"] = popen.pid
    try:
        return Proc(popen, info, timeout)
    except BaseException:  # out of fds...: do not leave an unsupervised process behind
        os.killpg(popen.pid, 9)
        popen.wait()
        raise


def op_connect(conn, req):
    _purge()
    proc = _get_proc(req, running=False)
    _answer(conn, proc, proc.subscribe())


def op_list(conn, req):
    _purge()
    procs = [p.info for pid, p in sorted(PROCS.items()) if not p.exited.is_set()]
    conn.send_json({"processes": procs})


def op_stdin(conn, req):
    import binascii

    data = req.get("data_b64")
    if not isinstance(data, str):
        raise invalid("field data_b64 must be a base64 string")
    try:
        raw = binascii.a2b_base64(data)
    except (binascii.Error, ValueError) as e:
        raise invalid(f"field data_b64: {e}") from None
    proc = _get_proc(req)
    with proc.stdin_lock:
        if isinstance(proc, terminal.PtyProc):
            proc.write(raw)
            conn.send_json({"ok": True})
            return
        f = proc.popen.stdin
        if f is None:
            raise invalid(f"process {proc.pid} was started without stdin")
        if f.closed:
            raise invalid(f"stdin of process {proc.pid} is closed")
        view = memoryview(raw)
        try:
            while view:
                view = view[os.write(f.fileno(), view) :]
        except BrokenPipeError:
            raise invalid(f"stdin of process {proc.pid} is closed (broken pipe)") from None
    conn.send_json({"ok": True})


def op_close_stdin(conn, req):
    proc = _get_proc(req)
    if isinstance(proc, terminal.PtyProc):
        raise invalid(f"process {proc.pid} runs on a terminal: type Ctrl-D (\\x04) to send end of file")
    with proc.stdin_lock:
        f = proc.popen.stdin
        if f is not None and not f.closed:
            try:
                f.close()
            except OSError:
                pass
    conn.send_json({"ok": True})


def op_signal(conn, req):
    sig = f_int(req, "signal", required=True, minimum=1)
    if sig > 64:
        raise invalid(f"invalid signal number {sig}")
    proc = _get_proc(req)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        raise AgentError("process_not_found", f"process {proc.pid} is gone") from None
    conn.send_json({"ok": True})


def op_resize(conn, req):
    cols, rows = terminal.parse_size(req, None)
    proc = _get_proc(req)
    if not isinstance(proc, terminal.PtyProc):
        raise invalid(f"process {proc.pid} was not started on a terminal")
    proc.resize(cols, rows)
    conn.send_json({"ok": True})

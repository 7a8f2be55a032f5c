"""The ``identity`` op of a microVM's agent (started with ``--identity``): a guest restored from a
snapshot is a copy of every other one (same memory, kernel random state, clock); the host's first
request gives it its own. Only the host reaches the agent (``--allow-peer``), and the backend
sends this before it hands the sandbox to anyone.

    {"op": "identity", "hostname", "sandbox_id", "time", "seed" (hex, 64 bytes), "resolv"}
"""

import os
import sys

from .wire import f_str, invalid

RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


def _write(path, text):
    try:
        if os.path.islink(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        os.write(2, f"identity: {path}: {e}\n".encode())


def op_identity(conn, req):
    import _socket
    import fcntl
    import time

    try:
        seed = bytes.fromhex(f_str(req, "seed", required=True))
    except ValueError:
        raise invalid("field seed must be hex") from None
    if len(seed) < 32:
        raise invalid("field seed must hold at least 32 bytes")
    when = req.get("time")
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise invalid("field time must be a number")
    name = f_str(req, "hostname", required=True)
    sandbox_id = f_str(req, "sandbox_id", required=True)
    resolv = f_str(req, "resolv", default="", allow_empty=True)
    # Entropy first: everything after this draws from a generator no other sandbox shares.
    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, seed)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    rng = sys.modules.get("random")  # this process's own generator, if anything imported it
    if rng is not None:
        rng.seed(os.urandom(32))
    time.clock_settime(time.CLOCK_REALTIME, float(when))
    _socket.sethostname(name)
    _write("/etc/hostname", name + "\n")
    _write("/etc/hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n")
    _write("/etc/resolv.conf", resolv)
    _write("/run/corral/sandbox_id", sandbox_id + "\n")
    conn.send_json({"ok": True, "pid": os.getpid()})

"""PID 1 of a corral microVM (runs in the guest, standard library only; copied into the initramfs).

The initramfs's stage 1 (``assets.INIT_SCRIPT``) mounts the root and execs this with the
template's python3. It starts the agent, says ``CORRAL-BOOTED`` on the serial console and then
waits for lines from the host on that console:

    ID {"hostname", "sandbox_id", "time", "seed", "resolv"}   -> the sandbox's identity, then ``CORRAL-OK``

A snapshot is taken while this process waits, so every sandbox restored from it gets its own
identity here: hostname, clock, and the kernel's random generator reseeded from a host seed
(two restored guests never share random state). It reaps orphans and powers the guest off when
the agent exits (the host sees QEMU exit).
"""

import fcntl
import json
import os
import select
import socket
import sys
import termios
import time

CONSOLE = "/dev/ttyS0"
RUN = "/run/corral"
BUSYBOX = RUN + "/bin/busybox"
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
GUEST_IP, GATEWAY, AGENT_PORT = "172.30.0.2", "172.30.0.1", 49982


def say(tty, text):
    os.write(tty, (text + "\n").encode())


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid


def start_agent():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.dup2(w, 3)
            os.closerange(4, 1024)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.execv(sys.executable, [
                sys.executable, "-I", "-S", RUN + "/agent", "--socket", f"tcp:{GUEST_IP}:{AGENT_PORT}",
                "--allow-peer", GATEWAY, "--warm", "--ready-fd", "3", "--log", RUN + "/agent.log",
            ])  # fmt: skip
        finally:
            os._exit(127)
    os.close(w)
    return pid, r


def write_file(path, text):
    try:
        if os.path.islink(path):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        sys.stderr.write(f"corral-init: {path}: {e}\n")


def apply_identity(ident):
    # Entropy first: everything after this draws from a generator no other sandbox shares.
    with open("/dev/urandom", "wb", buffering=0) as f:
        f.write(bytes.fromhex(ident["seed"]))
        fcntl.ioctl(f.fileno(), RNDRESEEDCRNG)
    time.clock_settime(time.CLOCK_REALTIME, float(ident["time"]))
    name = ident["hostname"]
    socket.sethostname(name)
    write_file("/etc/hostname", name + "\n")
    write_file("/etc/hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n")
    write_file("/etc/resolv.conf", ident.get("resolv", ""))
    write_file(RUN + "/sandbox_id", ident["sandbox_id"] + "\n")


def main():
    tty = os.open(CONSOLE, os.O_RDWR | os.O_NOCTTY)
    attrs = termios.tcgetattr(tty)
    attrs[3] &= ~(termios.ECHO | termios.ECHONL)  # the host's lines (a seed) are not echoed back
    termios.tcsetattr(tty, termios.TCSANOW, attrs)
    agent, ready = start_agent()
    line = b""
    deadline = time.monotonic() + 120
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if select.select([ready], [], [], 1)[0]:
            chunk = os.read(ready, 64)
            if not chunk:
                break
            line += chunk
    os.close(ready)
    if line != b"ready\n":
        say(tty, "CORRAL-ERROR the agent did not start: " + open_tail(RUN + "/agent.log"))
        poweroff()
    say(tty, "CORRAL-BOOTED")
    buf = b""
    while True:
        if select.select([tty], [], [], 1.0)[0]:
            chunk = os.read(tty, 65536)
            buf += chunk
            while b"\n" in buf:
                cmd, buf = buf.split(b"\n", 1)
                handle(tty, cmd.decode(errors="replace").strip())
        for pid in reap():
            if pid == agent:
                say(tty, "CORRAL-ERROR the agent exited: " + open_tail(RUN + "/agent.log"))
                poweroff()


def handle(tty, cmd):
    if cmd.startswith("ID "):
        try:
            apply_identity(json.loads(cmd[3:]))
        except Exception as e:
            say(tty, f"CORRAL-ERROR identity: {type(e).__name__}: {e}")
            return
        say(tty, "CORRAL-OK")


def open_tail(path):
    try:
        with open(path, "rb") as f:
            return f.read()[-800:].decode(errors="replace").replace("\n", " | ")
    except OSError as e:
        return str(e)


def poweroff():
    os.sync()
    try:
        os.execv(BUSYBOX, [BUSYBOX, "poweroff", "-f"])
    finally:
        os._exit(1)  # PID 1 exiting panics the kernel; QEMU (-no-reboot) exits either way


if __name__ == "__main__":
    main()

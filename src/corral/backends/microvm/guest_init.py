"""PID 1 of a corral microVM (runs in the guest, standard library only; copied into the initramfs).

The initramfs's stage 1 (``assets.INIT_SCRIPT``) mounts the root and execs this with the
template's python3. It starts the agent (``--warm``: one throwaway exec before it says ready;
``--identity``: the op by which the host gives each guest its own identity, the first request
after a restore), says ``CORRAL-BOOTED`` on the serial console, then reaps orphans and powers
the guest off when the agent exits (the host sees QEMU exit). A snapshot is taken while this
process waits.
"""

import os
import select
import sys
import time

CONSOLE = "/dev/ttyS0"
RUN = "/run/corral"
BUSYBOX = RUN + "/bin/busybox"
GUEST_IP, GATEWAY, AGENT_PORT = "172.30.0.2", "172.30.0.1", 49982


def say(tty, text):
    os.write(tty, (text + "\n").encode())


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
                "--allow-peer", GATEWAY, "--warm", "--identity", "--ready-fd", "3", "--log", RUN + "/agent.log",
            ])  # fmt: skip
        finally:
            os._exit(127)
    os.close(w)
    return pid, r


def main():
    tty = os.open(CONSOLE, os.O_RDWR | os.O_NOCTTY)
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
    while True:
        try:
            pid, _ = os.wait()  # blocked here, no timer: a restored guest has nothing to do here
        except ChildProcessError:
            pid = agent
        except InterruptedError:
            continue
        if pid == agent:
            say(tty, "CORRAL-ERROR the agent exited: " + open_tail(RUN + "/agent.log"))
            poweroff()


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

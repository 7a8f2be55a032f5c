"""Start the agent::

    python3 -I -S <this directory> --socket /run/corral/agent.sock --ready-fd 3 --log /run/corral/agent.log
    python3 -I -S <this directory> --socket tcp:10.213.0.2:49982 --allow-peer 10.213.0.1 ...

``--warm``: run one throwaway command through exec's path before saying ready (a microVM's
guest is snapshotted right after: its restores start with that work done). ``--identity``: the
``identity`` op (``identity.py``), by which a microVM's host gives each restored guest its own.

Inside a sandbox the prelude (``corral.backends.namespace.bwrap``) runs this module as the
package's ``__main__`` from the host-compiled bundle, or else runs the directory like the line
above.
"""

import os
import sys

if __package__:  # the package's __main__ (the prelude's bundle, or python3 -m)
    from . import interpreter, server, wire
else:  # python3 <this directory>: sys.path[0] is the directory; import it as a package instead
    _dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_dir)
    __import__(os.path.basename(_dir) + ".server")
    server = sys.modules[os.path.basename(_dir) + ".server"]
    interpreter = sys.modules[os.path.basename(_dir) + ".interpreter"]
    wire = sys.modules[os.path.basename(_dir) + ".wire"]


def parse_args(argv):
    opts = {"socket": "/run/corral/agent.sock", "ready_fd": None, "log": None, "allow_peer": None, "warm": False, "identity": False}
    it = iter(argv)
    for arg in it:
        if arg in ("--warm", "--identity"):
            opts[arg[2:]] = True
            continue
        key, eq, val = arg.partition("=")
        if key not in ("--socket", "--ready-fd", "--log", "--allow-peer"):
            raise SystemExit("agent: unknown argument " + arg)
        if not eq:
            try:
                val = next(it)
            except StopIteration:
                raise SystemExit("agent: missing value for " + key) from None
        opts[key[2:].replace("-", "_")] = val
    if opts["ready_fd"] is not None:
        opts["ready_fd"] = int(opts["ready_fd"])
    return opts


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    os.umask(0o022)
    sock = server.listen(opts["socket"])
    if opts["identity"]:
        server.enable_identity()
    if opts["warm"]:
        server.warm()
    if opts["ready_fd"] is not None:
        try:
            os.write(opts["ready_fd"], b"ready\n")
        except OSError:
            pass
        try:
            os.close(opts["ready_fd"])
        except OSError:
            pass
    if opts["log"]:
        # From now on nothing depends on the parent's pipes (it may close them any time).
        try:
            fd = os.open(opts["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError:
            fd = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        try:
            null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(null, 0)
            os.close(null)
        except OSError:
            pass
    wire.log(f"agent {wire.VERSION} listening on {opts['socket']} (pid {os.getpid()})")
    interpreter.start_in_background()  # templates with Jupyter kernels: warm the default one
    server.serve(sock, opts["allow_peer"])


if __name__ == "__main__":
    main()

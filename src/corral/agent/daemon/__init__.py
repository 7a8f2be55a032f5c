"""corral sandbox agent: the one daemon inside every sandbox.

Started as ``python3 -I -S <this directory> --socket /run/corral/agent.sock --ready-fd 3
--log /run/corral/agent.log`` (see ``__main__.py``); inside sandboxes the host passes these
modules precompiled (see the prelude in ``corral.backends.namespace.bwrap``).

Standard library only: these modules import each other relatively and nothing from corral. The
wire protocol is described in ARCHITECTURE.md ("Agent protocol"); the host side lives in
``corral.agent.protocol`` / ``corral.agent.client`` and must stay consistent with ``wire.py``
(tests check both interoperate).

Start-up speed matters (it is on the path of every sandbox start), so the modules import only
built-in modules at start (``_socket``, ``_thread``, ``_json`` instead of ``socket``,
``threading``, ``json``); ``subprocess``, ``threading`` and ``ctypes`` are imported after the
first request has been answered, or when first needed.

- ``wire.py``: protocol constants, JSON codec, framing, errors, :class:`Conn`, request fields
- ``users.py``: users, groups, per-thread filesystem identity, uid/gid names
- ``files.py``: file operations
- ``proc.py``: a started process, its output buffer and subscribers; command timeouts
- ``processes.py``: process operations (configure, exec, connect, list, stdin, signal, resize)
- ``terminal.py``: processes on a pseudo-terminal (``exec`` with ``pty``), their input and size
- ``identity.py``: a microVM guest's own identity (``--identity``)
- ``server.py``: socket, accept loop, dispatch, preload
- ``__main__.py``: command line, start-up
"""

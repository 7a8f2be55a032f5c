#!/usr/bin/env python3
"""corral sandbox agent: the one daemon inside every sandbox.

Started as::

    python3 -I -S /usr/local/lib/corral/agent.py --socket /run/corral/agent.sock \
        --ready-fd 3 --log /run/corral/agent.log

Standard library only and self-contained: this file is copied into sandboxes as is and
imports nothing from corral. The wire protocol is described in ARCHITECTURE.md ("Agent
protocol"); the host side lives in ``corral.agent.protocol`` / ``corral.agent.client`` and
must stay consistent with the constants and framing below (tests check both interoperate).

Start-up speed matters (it is on the path of every sandbox start), so the module imports
only built-in modules at start (``_socket``, ``_thread``, ``_json`` instead of ``socket``,
``threading``, ``json``); ``subprocess``, ``threading`` and ``ctypes`` are imported after
the first request has been answered, or when first needed.
"""

import _socket
import _thread
import os
import sys
import time

VERSION = "1"

# Frame kinds (1 byte) followed by a 4-byte big-endian payload length.
K_JSON = b"J"
K_DATA = b"D"
K_STDOUT = b"1"
K_STDERR = b"2"
K_END = b"E"
HEADER_SIZE = 5

MAX_SEND = 64 * 1024  # largest payload of a D/1/2 frame the agent sends
MAX_JSON_IN = 1 << 20  # larger incoming J frames are rejected
MAX_DATA_IN = 16 << 20  # larger incoming D frames are rejected

OUTPUT_KEEP = 1 << 20  # output kept per process for re-attach (connect)
OUTPUT_LAG = 1 << 20  # how far the slowest attached subscriber may fall behind
CHUNK_COST = 256  # bookkeeping cost charged per buffered chunk (bounds many tiny chunks)
STREAM_BATCH = 256 * 1024  # bytes sent to a subscriber per wake-up
ENDED_KEEP = 60.0  # seconds an ended process is remembered for connect
DRAIN_AFTER_EXIT = 1.0  # seconds to wait for the pipes after the main process exited
ENDED_OUTPUT_BUDGET = 16 << 20  # output kept in total for ended processes

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Sandbox-wide state set by "configure".
CONFIG: dict = {"envs": {}, "hostname": None}


# --------------------------------------------------------------------------- JSON
def _make_json():
    """loads/dumps from the C accelerator only: importing ``json`` costs ~10 ms (it pulls in ``re``)."""
    try:
        import _json

        class _Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            memo = None

            @staticmethod
            def parse_constant(name):
                raise ValueError("invalid JSON constant " + name)

        def _default(o):
            raise TypeError("not JSON serializable: " + type(o).__name__)

        scan = _json.make_scanner(_Ctx())
        enc = _json.make_encoder(
            None, _default, _json.encode_basestring_ascii, None, ":", ",", False, False, False
        )

        def loads(text):
            text = text.strip(" \t\r\n")
            try:
                obj, end = scan(text, 0)
            except Exception:
                # The C scanner reports errors well only once json.decoder is imported.
                import json

                json.loads(text)  # raises JSONDecodeError with a readable message
                raise ValueError("expecting a JSON value") from None
            if end != len(text):
                raise ValueError("extra data after the JSON value")
            return obj

        def dumps(obj):
            return "".join(enc(obj, 0))

        dumps({"a": [1, 2.5, None, True, "x"]})
        return loads, dumps
    except Exception:  # pragma: no cover - CPython always has _json
        import json

        return json.loads, lambda obj: json.dumps(obj, separators=(",", ":"))


json_loads, json_dumps = _make_json()


# --------------------------------------------------------------------------- misc
def log(msg):
    try:
        line = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + " " + msg + "\n"
        os.write(2, line.encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def log_exception(what):
    import traceback

    log(what + "\n" + traceback.format_exc())


def frame(kind, payload=b""):
    return kind + len(payload).to_bytes(4, "big") + payload


def json_frame(obj):
    return frame(K_JSON, json_dumps(obj).encode("ascii"))


class AgentError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message):
    return AgentError("invalid_request", message)


_ERRNO_CODES = None


def os_error(e):
    """Map an OSError to the AgentError the host turns into a corral.errors class."""
    global _ERRNO_CODES
    if _ERRNO_CODES is None:
        import errno

        _ERRNO_CODES = {
            errno.ENOENT: "file_not_found",
            errno.EACCES: "permission_denied",
            errno.EPERM: "permission_denied",
            errno.EROFS: "permission_denied",
            errno.ENOTDIR: "not_a_directory",
            errno.EISDIR: "is_a_directory",
            errno.EEXIST: "file_exists",
            errno.ENOTEMPTY: "file_exists",
        }
    code = _ERRNO_CODES.get(e.errno, "invalid_request")
    msg = e.strerror or str(e)
    if e.filename is not None:
        msg += ": " + str(e.filename)
        if e.filename2 is not None:
            msg += " -> " + str(e.filename2)
    return AgentError(code, msg)


class ClientGone(Exception):
    """The peer of a connection went away (never answered: there is nobody to answer)."""


class Conn:
    """One accepted connection: buffered frame reading, frame writing."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self, n):
        buf = self.buf
        while len(buf) < n:
            try:
                data = self.sock.recv(min(max(n - len(buf), 65536), 1 << 20))
            except OSError as e:
                raise ClientGone(e) from None
            if not data:
                return False
            buf += data
        return True

    def read_frame(self):
        """(kind, payload), or None on a clean end of stream at a frame boundary."""
        if not self._fill(HEADER_SIZE):
            if self.buf:
                raise ClientGone("connection closed mid-frame")
            return None
        buf = self.buf
        kind = bytes(buf[0:1])
        n = int.from_bytes(buf[1:5], "big")
        if n > (MAX_JSON_IN if kind == K_JSON else MAX_DATA_IN):
            raise invalid(f"frame too large: {n} bytes of kind {kind.decode('latin-1')!r}")
        if not self._fill(HEADER_SIZE + n):
            raise ClientGone("connection closed mid-frame")
        payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + n])
        del buf[: HEADER_SIZE + n]
        return kind, payload

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ClientGone(e) from None

    def send_json(self, obj):
        self.send(json_frame(obj))

    def send_error(self, code, message):
        self.send_json({"error": {"code": code, "message": message}})

    def drain_upload(self):
        """Discard D frames until E (or the end of the stream) so the client can finish sending."""
        while True:
            fr = self.read_frame()
            if fr is None or fr[0] != K_DATA:
                return


# --------------------------------------------------------------------------- request fields
def f_str(req, key, default=None, required=False, allow_empty=False):
    v = req.get(key)
    if v is None:
        if required:
            raise invalid("missing field: " + key)
        return default
    if not isinstance(v, str) or (not v and not allow_empty) or "\0" in v:
        raise invalid(f"field {key} must be a non-empty string")
    return v


def f_int(req, key, default=None, required=False, minimum=None):
    v = req.get(key)
    if v is None:
        if required:
            raise invalid("missing field: " + key)
        return default
    if not isinstance(v, int) or isinstance(v, bool):
        raise invalid(f"field {key} must be an integer")
    if minimum is not None and v < minimum:
        raise invalid(f"field {key} must be >= {minimum}")
    return v


def f_envs(req, key):
    v = req.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid(f"field {key} must be an object of strings")
    for k, val in v.items():
        if not isinstance(val, str) or not k or "=" in k or "\0" in k or "\0" in val:
            raise invalid(f"field {key}: invalid variable {k!r}")
    return v


def get_user(req):
    import pwd

    name = f_str(req, "user", default="user")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise invalid("unknown user: " + name) from None


def user_groups(pw):
    try:
        return os.getgrouplist(pw.pw_name, pw.pw_gid)
    except OSError:
        return [pw.pw_gid]


def f_path(req, key, pw):
    p = f_str(req, key, required=True)
    if not p.startswith("/"):
        p = os.path.join(pw.pw_dir or "/", p)
    return os.path.normpath(p)


# --------------------------------------------------------------------------- fs identity
_LIBC = None
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81, "ppc64": 81, "s390x": 206}
_ORIG_GROUPS = os.getgroups()


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _thread_setgroups(groups):
    """setgroups(2) for the calling thread only (glibc's wrapper changes every thread)."""
    import ctypes

    nr = _SYS_SETGROUPS.get(os.uname().machine)
    if nr is None:
        return False
    arr = (ctypes.c_uint * max(len(groups), 1))(*groups)
    return _libc().syscall(ctypes.c_long(nr), ctypes.c_long(len(groups)), arr) == 0


class FsIdentity:
    """Run file operations on this thread as ``pw`` (setfsuid/setfsgid are per thread)."""

    def __init__(self, pw):
        self.pw = pw
        self.active = False

    def __enter__(self):
        pw = self.pw
        if pw.pw_uid == 0 or os.geteuid() != 0:
            return self  # root already, or an unprivileged agent (tests): nothing to switch
        libc = _libc()
        self.active = True
        if not _thread_setgroups(user_groups(pw)):
            _thread_setgroups([pw.pw_gid])
        libc.setfsgid(pw.pw_gid)
        libc.setfsuid(pw.pw_uid)
        # setfsuid returns the previous value: calling it again tells whether it took.
        if libc.setfsuid(pw.pw_uid) != pw.pw_uid or libc.setfsgid(pw.pw_gid) != pw.pw_gid:
            self.__exit__(None, None, None)
            raise AgentError("internal", "cannot switch the filesystem identity to " + pw.pw_name)
        return self

    def __exit__(self, *exc):
        if self.active:
            libc = _libc()
            libc.setfsuid(0)
            libc.setfsgid(0)
            _thread_setgroups(_ORIG_GROUPS)
            self.active = False


# --------------------------------------------------------------------------- EntryInfo
class Names:
    """uid/gid -> name, read from the sandbox's /etc/passwd and /etc/group (cached per request)."""

    def __init__(self):
        self.users = {}
        self.groups = {}

    def user(self, uid):
        name = self.users.get(uid)
        if name is None:
            import pwd

            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self.users[uid] = name
        return name

    def group(self, gid):
        name = self.groups.get(gid)
        if name is None:
            import grp

            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = str(gid)
            self.groups[gid] = name
        return name


def iso_time(ns):
    secs, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rem // 1000:06d}Z"


def entry_info(path, names, st=None):
    import stat

    if st is None:
        st = os.lstat(path)
    mode = st.st_mode
    target = None
    if stat.S_ISLNK(mode):
        kind = "symlink"
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    elif stat.S_ISDIR(mode):
        kind = "dir"
    else:
        kind = "file"
    return {
        "name": os.path.basename(path) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(mode),
        "permissions": stat.filemode(mode)[1:],
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "modified_time": iso_time(st.st_mtime_ns),
        "symlink_target": target,
    }


# --------------------------------------------------------------------------- simple ops
def op_ping(conn, req):
    conn.send_json({"ok": True, "pid": os.getpid(), "version": VERSION})


def op_configure(conn, req):
    envs = f_envs(req, "envs")
    hostname = f_str(req, "hostname", allow_empty=True)
    CONFIG["envs"] = dict(envs)
    CONFIG["hostname"] = hostname
    conn.send_json({"ok": True})


# --------------------------------------------------------------------------- file ops
def op_stat(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        info = entry_info(path, Names())
    conn.send_json(info)


def op_list_dir(conn, req):
    import stat

    pw = get_user(req)
    path = f_path(req, "path", pw)
    depth = f_int(req, "depth", default=1, minimum=1)
    names = Names()
    entries = []

    def walk(d, level):
        with os.scandir(d) as it:
            items = sorted(it, key=lambda e: e.name)
        for e in items:
            p = os.path.join(d, e.name)
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile
            entries.append(entry_info(p, names, st))
            if level < depth and stat.S_ISDIR(st.st_mode):
                try:
                    walk(p, level + 1)
                except OSError:
                    pass  # an unreadable subdirectory is listed but not entered

    with FsIdentity(pw):
        walk(path, 1)
    conn.send_json({"entries": entries})


def op_mkdir(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        try:
            os.makedirs(path)
            created = True
        except FileExistsError:
            if not os.path.isdir(path):
                raise AgentError("file_exists", "a file exists at " + path) from None
            created = False
    conn.send_json({"created": created})


def _rm_contents(dfd):
    with os.scandir(dfd) as it:
        items = list(it)
    for e in items:
        if e.is_dir(follow_symlinks=False):
            fd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                _rm_contents(fd)
            finally:
                os.close(fd)
            os.rmdir(e.name, dir_fd=dfd)
        else:
            os.unlink(e.name, dir_fd=dfd)


def remove_tree(path):
    """Remove a file, a symlink or a directory tree, never following symlinks."""
    import stat

    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _rm_contents(fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def op_remove(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        remove_tree(path)
    conn.send_json({"ok": True})


def op_rename(conn, req):
    pw = get_user(req)
    src = f_path(req, "src", pw)
    dst = f_path(req, "dst", pw)
    with FsIdentity(pw):
        os.rename(src, dst)
        info = entry_info(dst, Names())
    conn.send_json(info)


def op_read(conn, req):
    import stat

    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise AgentError("is_a_directory", "Is a directory: " + path)
        conn.send_json({"ok": True, "size": st.st_size})
        while True:
            try:
                data = os.read(fd, MAX_SEND)
            except OSError as e:  # after the answer started: an error frame ends the stream
                err = os_error(e)
                conn.send_error(err.code, err.message)
                return
            if not data:
                break
            conn.send(frame(K_DATA, data))
        conn.send(frame(K_END))
    finally:
        os.close(fd)


def op_write(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    err = None
    with FsIdentity(pw):
        try:
            parent = os.path.dirname(path)
            if parent:
                try:
                    os.makedirs(parent, exist_ok=True)
                except FileExistsError:
                    raise AgentError("not_a_directory", "Not a directory: " + parent) from None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as e:
            err = os_error(e)
        except AgentError as e:
            err = e
    if err is None:
        try:
            while True:
                fr = conn.read_frame()
                if fr is None:
                    return  # the client went away mid-upload: the file keeps what arrived
                kind, payload = fr
                if kind == K_END:
                    break
                if kind != K_DATA:
                    err = invalid("expected D or E frames in an upload")
                    break
                view = memoryview(payload)
                try:
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as e:
                    err = os_error(e)
                    break
        finally:
            os.close(fd)
    if err is not None:
        conn.send_error(err.code, err.message)
        conn.drain_upload()
        return
    with FsIdentity(pw):
        info = entry_info(path, Names())
    conn.send_json(info)


# --------------------------------------------------------------------------- processes
class Deadlines:
    """One thread for every command timeout (cheaper than a threading.Timer per process)."""

    def __init__(self):
        self.cv = None
        self.heap = []
        self.seq = 0

    def add(self, when, callback):
        """Call ``callback`` at monotonic time ``when``; set ``entry[2] = None`` to cancel."""
        import threading
        from _heapq import heappush

        if self.cv is None:
            with PROCS_LOCK:
                if self.cv is None:
                    self.cv = threading.Condition(threading.Lock())
                    threading.Thread(target=self._run, name="deadlines", daemon=True).start()
        with self.cv:
            self.seq += 1
            if not self.seq % 1024:  # drop cancelled entries of long-gone processes
                from _heapq import heapify

                self.heap = [e for e in self.heap if e[2] is not None]
                heapify(self.heap)
            entry = [when, self.seq, callback]
            heappush(self.heap, entry)
            if self.heap[0] is entry:
                self.cv.notify()
        return entry

    def _run(self):
        from _heapq import heappop

        while True:
            with self.cv:
                while True:
                    heap = self.heap
                    while heap and heap[0][2] is None:
                        heappop(heap)  # cancelled
                    if not heap:
                        self.cv.wait()
                        continue
                    left = heap[0][0] - time.monotonic()
                    if left <= 0:
                        callback = heappop(heap)[2]
                        break
                    self.cv.wait(left)
            try:
                callback()
            except Exception:
                log_exception("deadline callback")


DEADLINES = Deadlines()
PROCS: dict = {}  # pid -> Proc (running, or ended less than ENDED_KEEP seconds ago)
PROCS_LOCK = _thread.allocate_lock()


class Sub:
    __slots__ = ("pos",)

    def __init__(self, pos):
        self.pos = pos


class Proc:
    """A started process: its output buffer (absolute byte offsets), subscribers and end."""

    def __init__(self, popen, info, timeout):
        import threading
        from _collections import deque

        self.popen = popen
        self.pid = popen.pid
        self.info = info
        self.timeout = timeout
        self.cv = threading.Condition(threading.Lock())
        self.chunks = deque()  # [start offset, kind, bytearray]
        self.end = 0  # absolute offset after the last byte produced
        self.cost = 0  # buffered bytes + CHUNK_COST per chunk
        self.subs = []
        self.finished = False  # the end event is known and every byte is buffered
        self.exit_code = None
        self.error = None
        self.ended_at = None
        self.exited = threading.Event()
        self.timed_out = False
        self.timer = None
        self.stdin_lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()

    # ---- threads
    def start(self):
        import threading

        threading.Thread(target=self._wait, name=f"wait-{self.pid}", daemon=True).start()
        threading.Thread(target=self._read, name=f"read-{self.pid}", daemon=True).start()
        if self.timeout is not None:
            self.timer = DEADLINES.add(time.monotonic() + self.timeout, self._on_timeout)

    def _on_timeout(self):
        if self.popen.returncode is None and not self.exited.is_set():
            self.timed_out = True
            try:
                os.killpg(self.pid, 9)
            except OSError:
                pass

    def _wait(self):
        try:
            rc = self.popen.wait()
        except Exception:
            log_exception(f"wait {self.pid}")
            rc = -9
        if self.timer is not None:
            self.timer[2] = None  # cancel (and drop the reference to this process)
        if rc < 0:
            self.exit_code = 128 - rc
            self.error = "timeout" if self.timed_out else "killed"
        else:
            self.exit_code = rc
            self.error = None
        if self.stdin_lock.acquire(blocking=False):
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
            except OSError:
                pass
            finally:
                self.stdin_lock.release()
        try:  # before exited.set(): the reader closes the wake pipe once it sees that
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        self.exited.set()

    def _read(self):
        import select

        p = self.popen
        kinds = {p.stdout.fileno(): K_STDOUT, p.stderr.fileno(): K_STDERR}
        poller = select.poll()
        for fd in kinds:
            poller.register(fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        deadline = None
        try:
            while kinds:
                timeout = None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break  # the process exited but something still holds its pipes
                    timeout = int(left * 1000) + 1
                for fd, _ev in poller.poll(timeout):
                    if fd == self.wake_r:
                        poller.unregister(fd)
                        deadline = time.monotonic() + DRAIN_AFTER_EXIT
                        continue
                    if fd not in kinds:
                        continue
                    try:
                        data = os.read(fd, MAX_SEND)
                    except OSError:
                        data = b""
                    if data:
                        self.push(kinds[fd], data)
                    else:
                        poller.unregister(fd)
                        del kinds[fd]
            self.exited.wait()
        except Exception:
            log_exception(f"reader {self.pid}")
            self.exited.wait()
        finally:
            for f in (p.stdout, p.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            for fd in (self.wake_r, self.wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            with self.cv:
                self.finished = True
                self.ended_at = time.monotonic()
                self.cv.notify_all()

    # ---- buffer (call with self.cv held unless said otherwise)
    def push(self, kind, data):
        with self.cv:
            # Backpressure: while someone listens, the slowest listener sets the pace (this
            # thread stops reading the pipe, so the child blocks on write).
            while self.subs and self.cost > OUTPUT_KEEP + OUTPUT_LAG:
                self.cv.wait()
            chunks = self.chunks
            n = len(data)
            if chunks and chunks[-1][1] == kind and len(chunks[-1][2]) + n <= MAX_SEND:
                chunks[-1][2] += data
                self.cost += n
            else:
                chunks.append([self.end, kind, bytearray(data)])
                self.cost += n + CHUNK_COST
            self.end += n
            self._trim()
            self.cv.notify_all()

    def _trim(self):
        chunks = self.chunks
        minpos = min(s.pos for s in self.subs) if self.subs else self.end
        while chunks:
            start, _kind, data = chunks[0]
            c = len(data) + CHUNK_COST
            if start + len(data) > minpos or self.cost - c < OUTPUT_KEEP:
                break
            chunks.popleft()
            self.cost -= c

    def _collect(self, pos):
        out = []
        total = 0
        for start, kind, data in self.chunks:
            stop = start + len(data)
            if stop <= pos:
                continue
            piece = bytes(data[max(pos - start, 0) :])
            out.append(kind + len(piece).to_bytes(4, "big") + piece)
            pos = stop
            total += len(piece)
            if total >= STREAM_BATCH:
                break
        return b"".join(out), pos

    def subscribe(self):
        with self.cv:
            sub = Sub(self.chunks[0][0] if self.chunks else self.end)
            self.subs.append(sub)
            return sub

    def unsubscribe(self, sub):
        with self.cv:
            try:
                self.subs.remove(sub)
            except ValueError:
                pass
            self._trim()
            self.cv.notify_all()

    def stream(self, conn, sub):
        """Send buffered then live output to ``conn``, then the end event."""
        try:
            while True:
                with self.cv:
                    while True:
                        data, newpos = self._collect(sub.pos)
                        if data or self.finished:
                            break
                        self.cv.wait()
                    end = None if data else {"type": "end", "exit_code": self.exit_code, "error": self.error}
                if end is not None:
                    conn.send_json(end)
                    return
                conn.send(data)
                with self.cv:
                    sub.pos = newpos
                    self._trim()
                    self.cv.notify_all()
        finally:
            self.unsubscribe(sub)


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
    import subprocess

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
    try:
        popen = subprocess.Popen(
            [cmd, *args],
            stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **kw,
        )
    except OSError as e:
        raise os_error(e) from None
    except (ValueError, subprocess.SubprocessError) as e:
        raise invalid(f"cannot start {cmd}: {e}") from None
    try:
        proc = Proc(
            popen,
            {"pid": popen.pid, "cmd": cmd, "args": args, "cwd": cwd, "tag": tag, "user": pw.pw_name},
            timeout,
        )
    except BaseException:  # out of fds...: do not leave an unsupervised process behind
        os.killpg(popen.pid, 9)
        popen.wait()
        raise
    sub = proc.subscribe()  # before any output can be produced: nothing is lost
    with PROCS_LOCK:
        PROCS[proc.pid] = proc
    proc.start()
    try:
        conn.send_json({"type": "start", "pid": proc.pid})
    except ClientGone:
        proc.unsubscribe(sub)
        raise
    proc.stream(conn, sub)


def op_connect(conn, req):
    _purge()
    proc = _get_proc(req, running=False)
    sub = proc.subscribe()
    try:
        conn.send_json({"type": "start", "pid": proc.pid})
    except ClientGone:
        proc.unsubscribe(sub)
        raise
    proc.stream(conn, sub)


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


OPS = {
    "ping": op_ping,
    "configure": op_configure,
    "exec": op_exec,
    "connect": op_connect,
    "list": op_list,
    "stdin": op_stdin,
    "close_stdin": op_close_stdin,
    "signal": op_signal,
    "read": op_read,
    "write": op_write,
    "list_dir": op_list_dir,
    "stat": op_stat,
    "mkdir": op_mkdir,
    "remove": op_remove,
    "rename": op_rename,
}


# --------------------------------------------------------------------------- server
_PRELOADED = False


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


def serve(sock):
    while True:
        try:
            fd, _addr = sock._accept()
        except InterruptedError:
            continue
        except OSError as e:
            log(f"accept failed: {e}")
            time.sleep(0.05)
            continue
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        try:
            _thread.start_new_thread(handle, (conn,))
        except RuntimeError as e:
            log(f"cannot start a thread: {e}")
            conn.close()


def parse_args(argv):
    opts = {"socket": "/run/corral/agent.sock", "ready_fd": None, "log": None}
    it = iter(argv)
    for arg in it:
        key, eq, val = arg.partition("=")
        if key not in ("--socket", "--ready-fd", "--log"):
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
    sock = listen(opts["socket"])
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
    log(f"agent {VERSION} listening on {opts['socket']} (pid {os.getpid()})")
    serve(sock)


if __name__ == "__main__":
    main()

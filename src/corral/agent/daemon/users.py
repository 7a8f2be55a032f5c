"""Users: who a request runs as, their groups, and the per-thread filesystem identity
(setfsuid/setfsgid, or the thread's effective ids where setfsuid is missing) file operations run
with; uid/gid -> name lookups."""

import os

from .wire import AgentError, f_str, invalid

# name -> (files' signature, passwd entry, groups): a lookup reads /etc/passwd and /etc/group
# (slow the first time after a microVM restore: cold code under TCG); kept while those files are
# unchanged (inode, size, mtime and ctime of each).
_USERS: dict = {}
_USER_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf")


def _user_files_signature():
    sig = []
    for path in _USER_FILES:
        try:
            st = os.stat(path)
            sig.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


def _lookup(name):
    sig = _user_files_signature()
    hit = _USERS.get(name)
    if hit is not None and hit[0] == sig:
        return hit
    import pwd

    pw = pwd.getpwnam(name)  # KeyError: unknown
    try:
        groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    except OSError:
        groups = [pw.pw_gid]
    if len(_USERS) > 64:
        _USERS.clear()
    entry = _USERS[name] = (sig, pw, groups)
    return entry


def get_user(req):
    name = f_str(req, "user", default="user")
    try:
        return _lookup(name)[1]
    except KeyError:
        raise invalid("unknown user: " + name) from None


def user_groups(pw):
    try:
        hit = _lookup(pw.pw_name)
    except KeyError:
        hit = None
    if hit is not None and hit[1] == pw:
        return list(hit[2])
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
# setresuid/setresgid, for kernels without setfsuid (gVisor answers ENOSYS): as raw system calls
# they change the calling thread only (glibc's wrappers change every thread).
_SYS_SETRESUID = {"x86_64": 117, "aarch64": 147, "riscv64": 147, "ppc64le": 164, "ppc64": 164, "s390x": 208}
_SYS_SETRESGID = {"x86_64": 119, "aarch64": 149, "riscv64": 149, "ppc64le": 169, "ppc64": 169, "s390x": 210}
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
        self.effective = False

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
        if libc.setfsuid(pw.pw_uid) == pw.pw_uid and libc.setfsgid(pw.pw_gid) == pw.pw_gid:
            return self
        if _thread_setres(pw.pw_uid, pw.pw_gid):
            self.effective = True  # the thread's effective ids (and so its fs ids) are the user's
            return self
        self.__exit__(None, None, None)
        raise AgentError("internal", "cannot switch the filesystem identity to " + pw.pw_name)

    def __exit__(self, *exc):
        if self.active:
            libc = _libc()
            if self.effective:
                _thread_setres(0, 0)  # euid 0 again: the thread's capabilities come back
                self.effective = False
            libc.setfsuid(0)
            libc.setfsgid(0)
            _thread_setgroups(_ORIG_GROUPS)
            self.active = False


def _thread_setres(uid, gid):
    """Effective uid and gid of the calling thread only (the saved ids stay 0, so the thread
    can come back); uid last on the way in, first on the way out."""
    import ctypes

    machine = os.uname().machine
    nr_uid, nr_gid = _SYS_SETRESUID.get(machine), _SYS_SETRESGID.get(machine)
    if nr_uid is None or nr_gid is None:
        return False
    libc, keep = _libc(), ctypes.c_long(-1)
    if uid == 0:
        return (
            libc.syscall(ctypes.c_long(nr_uid), keep, ctypes.c_long(0), keep) == 0
            and libc.syscall(ctypes.c_long(nr_gid), keep, ctypes.c_long(0), keep) == 0
        )
    return (
        libc.syscall(ctypes.c_long(nr_gid), keep, ctypes.c_long(gid), keep) == 0
        and libc.syscall(ctypes.c_long(nr_uid), keep, ctypes.c_long(uid), keep) == 0
    )


# --------------------------------------------------------------------------- names
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

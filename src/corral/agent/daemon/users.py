"""Users: who a request runs as, their groups, and the per-thread filesystem identity
(setfsuid/setfsgid) file operations run with; uid/gid -> name lookups."""

import os

from .wire import AgentError, f_str, invalid


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

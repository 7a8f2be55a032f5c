"""Protocol constants, the start-up-cheap JSON codec, logging, framing, errors, the
connection (:class:`Conn`) and request field checks.

Must stay consistent with ``corral.agent.protocol`` (the host side; tests check both agree).
"""

import os
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

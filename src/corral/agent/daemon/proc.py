"""A started process (:class:`Proc`): its output buffer with absolute byte offsets, the
subscribers streaming it, its end; and the one thread that enforces command timeouts."""

import _thread
import os
import time

from .wire import K_STDERR, K_STDOUT, MAX_SEND, log_exception

OUTPUT_KEEP = 1 << 20  # output kept per process for re-attach (connect)
OUTPUT_LAG = 1 << 20  # how far the slowest attached subscriber may fall behind
CHUNK_COST = 256  # bookkeeping cost charged per buffered chunk (bounds many tiny chunks)
STREAM_BATCH = 256 * 1024  # bytes sent to a subscriber per wake-up
DRAIN_AFTER_EXIT = 1.0  # seconds to wait for the pipes after the main process exited


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

    def _outputs(self):
        """fd -> frame kind of what this process prints (a PTY overrides it)."""
        p = self.popen
        return {p.stdout.fileno(): K_STDOUT, p.stderr.fileno(): K_STDERR}

    def _close_outputs(self):
        for f in (self.popen.stdout, self.popen.stderr):
            try:
                f.close()
            except OSError:
                pass

    def _read(self):
        import select

        kinds = self._outputs()
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
                        break  # the process exited but something still holds its outputs
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
                    except BlockingIOError:  # a non-blocking PTY master woke up with nothing
                        continue
                    except OSError:  # EIO on a PTY master: every slave side closed (end of file)
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
            self._close_outputs()
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

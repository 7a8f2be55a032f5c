"""corral's code interpreter server, inside a code-interpreter sandbox.

    python3 /usr/local/lib/corral/agent/kernel_server --socket /run/corral/kernels.sock

The agent starts it (as root, in the background) when the sandbox starts and relays requests
to it (op ``code``). It drives real Jupyter kernels with jupyter_client: one kernel per code
context, run as the sandbox's ``user``; the default context of each language is created on
first use, Python's at start-up so the first cell does not pay the kernel start.

Protocol, one request per connection: the client writes one JSON line, the server answers
JSON lines. ``execute`` answers ``{"type": "accepted", "context": {...}}`` and then the lines of E2B's ``/execute``
stream: ``stdout``/``stderr`` (``text``, ``timestamp``), ``result`` (one key per MIME type,
``is_main_result``), ``error`` (``name``, ``value``, ``traceback``),
``number_of_executions``, and last ``end_of_execution``. The other ops answer one line,
``{"ok": true, ...}``. A request that cannot be served answers ``{"error": {"code", "message"}}``. A client that goes away during an
execution interrupts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pwd
import re
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

log = logging.getLogger("kernels")

# Language -> kernelspec name; typescript and javascript are tslab's two kernels.
KERNELS = {"python": "python3", "javascript": "jslab", "typescript": "tslab", "bash": "bash", "r": "ir"}
ALIASES = {"py": "python", "python3": "python", "js": "javascript", "ts": "typescript", "sh": "bash"}
USER = "user"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOME = "/home/user"
TEXT_PIECE = 256 * 1024  # stdout/stderr text per line
MAX_REQUEST = 16 << 20  # one request line (code + env vars)
DRAIN_AFTER_INTERRUPT = 10.0  # seconds an interrupted cell gets to end before its kernel restarts
REINTERRUPT_EVERY = 1.0  # an interrupt that lands before the kernel enters the cell is ignored: resend
REPLY_GRACE = 2.0
TSLAB_ABORT_WINDOW = 0.25  # seconds to wait for the idle status once the execute reply arrived
MIME_KEYS = {
    "text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
    "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
    "application/json": "json", "application/javascript": "javascript", "e2b/data": "data",
    "e2b/chart": "chart",
}  # fmt: skip


class KernelGone(Exception):
    """The kernel died while the run was being set up."""


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def now() -> str:
    return datetime.now(UTC).isoformat()


def normalize_language(language: str | None) -> str:
    lang = (language or "python").strip().lower()
    return ALIASES.get(lang, lang)


# ---------------------------------------------------------------------------------------- env
def set_env_code(language: str, envs: dict[str, str]) -> tuple[str, str] | None:
    """Code that sets these variables in a kernel, and code that restores the old values."""
    if not envs:
        return None
    if language == "python":
        js = json.dumps(envs)
        return (
            f"import os as __c\n__c_saved = {{k: __c.environ.get(k) for k in {js}}}\n__c.environ.update({js})",
            "[__c.environ.pop(k, None) if v is None else __c.environ.__setitem__(k, v)"
            " for k, v in __c_saved.items()]\ndel __c, __c_saved",
        )
    if language in ("javascript", "typescript"):
        js = json.dumps(envs)
        return (
            f"globalThis.__c_saved = Object.fromEntries(Object.keys({js}).map(k => [k, process.env[k]]));"
            f" Object.assign(process.env, {js}); undefined",
            "for (const [k, v] of Object.entries(globalThis.__c_saved))"
            " { if (v === undefined) delete process.env[k]; else process.env[k] = v; } undefined",
        )
    if language == "bash":
        def q(v: str) -> str:
            return "'" + v.replace("'", "'\\''") + "'"

        saves = " ".join(f"__c_{i}=${{{k}-__unset__}};" for i, k in enumerate(envs))
        sets = " ".join(f"export {k}={q(v)};" for k, v in envs.items())
        restores = " ".join(
            f'if [ "$__c_{i}" = __unset__ ]; then unset {k}; else export {k}="$__c_{i}"; fi; unset __c_{i};'
            for i, k in enumerate(envs)
        )
        return saves + " " + sets, restores
    if language == "r":
        def rq(v: str) -> str:
            return json.dumps(v)  # an R string literal (JSON escapes are valid R escapes)

        names = "c(" + ", ".join(rq(k) for k in envs) + ")"
        sets = ", ".join(f"{rq(k)} = {rq(v)}" for k, v in envs.items())
        return (
            f".c_saved <- Sys.getenv({names}, unset = NA); invisible(do.call(Sys.setenv, list({sets})))",
            "for (.c_k in names(.c_saved)) { if (is.na(.c_saved[[.c_k]])) Sys.unsetenv(.c_k)"
            " else do.call(Sys.setenv, setNames(list(.c_saved[[.c_k]]), .c_k)) }; rm(.c_saved, .c_k)",
        )
    return None


def valid_envs(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k.isidentifier() for k, v in value.items()
    ):
        raise RequestError("invalid_request", "env_vars must map variable names (letters, digits, _) to strings")
    return value


# ------------------------------------------------------------------------------------ kernels
class UserKernelManager(AsyncKernelManager):
    """A kernel run as the sandbox's user: its connection file is the user's to read."""

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        pw = pwd.getpwnam(USER)
        os.chown(self.connection_file, pw.pw_uid, pw.pw_gid)


class Context:
    def __init__(self, language: str, cwd: str, default: bool) -> None:
        self.id = language if default else uuid.uuid4().hex
        self.language, self.cwd, self.default = language, cwd, default
        self.lock = asyncio.Lock()
        self.km: UserKernelManager | None = None
        self.kc: Any = None
        self.starting: asyncio.Task[None] | None = None
        self.died: str | None = None  # why the last kernel died (reported on the next run)
        self.sandbox_envs_set = False
        self.ready_at = 0.0  # (loop time) the kernel takes no request before this

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def start(self, runtime_dir: Path) -> None:
        if self.starting is None or (self.starting.done() and self.km is None):
            self.starting = asyncio.ensure_future(self._start(runtime_dir))
        await asyncio.shield(self.starting)

    async def _start(self, runtime_dir: Path) -> None:
        pw = pwd.getpwnam(USER)
        km = UserKernelManager(
            kernel_name=KERNELS[self.language],
            connection_file=str(runtime_dir / f"kernel-{self.id}-{uuid.uuid4().hex[:8]}.json"),
        )
        env = {
            "HOME": pw.pw_dir, "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash", "LANG": "C.UTF-8",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1", "JUPYTER_PLATFORM_DIRS": "1",
        }  # fmt: skip
        if os.path.exists(CA_BUNDLE):  # as for commands (see the agent's processes.py)
            env.update({var: CA_BUNDLE for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")})
        try:
            with open(os.devnull, "wb") as null, open(runtime_dir / f"{self.id}.stderr", "ab") as err:
                await km.start_kernel(
                    cwd=self.cwd, env=env, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], stdout=null, stderr=err,
                )  # fmt: skip
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=90)
        except Exception as e:
            log.exception("kernel %s for context %s failed to start", km.kernel_name, self.id)
            try:
                await km.shutdown_kernel(now=True)
            except Exception:
                pass
            raise RequestError("kernel_failed", f"the {self.language} kernel failed to start: {e}") from None
        self.km, self.kc, self.sandbox_envs_set = km, kc, False
        log.info("kernel %s started for context %s (pid %s)", km.kernel_name, self.id, km.provisioner.pid)

    async def alive(self) -> bool:
        return self.km is not None and await self.km.is_alive()

    async def exit_reason(self) -> str:
        code = None
        if self.km is not None and self.km.provisioner is not None:
            code = await self.km.provisioner.poll()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory, or killed from a command)" if -code == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        return f"exited with code {code}" if code is not None else "stopped"

    async def stop(self) -> None:
        km, kc = self.km, self.kc
        self.km = self.kc = None
        self.starting = None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            try:
                await km.shutdown_kernel(now=True)
            except Exception:
                log.exception("stopping the kernel of context %s", self.id)
            try:
                km.cleanup_resources()
            except Exception:
                pass


class Server:
    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.contexts: dict[str, Context] = {}
        specs = KernelSpecManager().find_kernel_specs()
        self.languages = {lang: name for lang, name in KERNELS.items() if name in specs}

    # --------------------------------------------------------------------------- contexts
    def language(self, value: Any) -> str:
        if value is not None and not isinstance(value, str):
            raise RequestError("invalid_request", "language must be a string")
        lang = normalize_language(value)
        if lang not in self.languages:
            known = ", ".join(sorted(self.languages))
            raise RequestError("invalid_request", f"unknown language {value!r}: this template has {known}")
        return lang

    def default_context(self, language: str) -> Context:
        ctx = self.contexts.get(language)
        if ctx is None:
            ctx = self.contexts[language] = Context(language, HOME, default=True)
        return ctx

    def context(self, context_id: Any) -> Context:
        ctx = self.contexts.get(context_id) if isinstance(context_id, str) else None
        if ctx is None:
            raise RequestError("context_not_found", f"code context {context_id!r} not found")
        return ctx

    async def create_context(self, req: dict[str, Any]) -> dict[str, Any]:
        language = self.language(req.get("language"))
        cwd = req.get("cwd") or HOME
        if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
            raise RequestError("invalid_request", "cwd must be an absolute path")
        if not os.path.isdir(cwd):
            raise RequestError("file_not_found", f"cwd {cwd} is not a directory")
        ctx = Context(language, cwd, default=False)
        self.contexts[ctx.id] = ctx
        try:
            await ctx.start(self.runtime_dir)
        except RequestError:
            del self.contexts[ctx.id]
            raise
        return {"ok": True, "context": ctx.info()}

    async def remove_context(self, req: dict[str, Any]) -> dict[str, Any]:
        ctx = self.context(req.get("id"))
        del self.contexts[ctx.id]
        await ctx.stop()
        return {"ok": True}

    async def restart_context(self, req: dict[str, Any]) -> dict[str, Any]:
        ctx = self.context(req.get("id"))
        async with ctx.lock:
            await ctx.stop()
            ctx.died = None
            await ctx.start(self.runtime_dir)
        return {"ok": True, "context": ctx.info()}

    async def list_contexts(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "contexts": [c.info() for c in self.contexts.values()], "languages": sorted(self.languages)}

    # --------------------------------------------------------------------------- execute
    async def execute(self, req: dict[str, Any], out: Output, reader: asyncio.StreamReader) -> None:
        code = req.get("code")
        if not isinstance(code, str):
            raise RequestError("invalid_request", "code must be a string")
        if req.get("context_id") is not None and req.get("language") is not None:
            raise RequestError("invalid_request", "give a language or a context, not both")
        envs = valid_envs(req.get("env_vars"))
        sandbox_envs = valid_envs(req.get("sandbox_envs"))
        timeout = req.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise RequestError("invalid_request", "timeout must be a positive number of seconds")
        if req.get("context_id") is not None:
            ctx = self.context(req["context_id"])
        else:
            ctx = self.default_context(self.language(req.get("language")))
        await out.send({"type": "accepted", "context": ctx.info()})
        async with ctx.lock:
            await Execution(self, ctx, out, reader).run(code, envs, sandbox_envs, timeout)


class Output:
    """The answer's JSON lines; remembers whether the client went away."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.gone = False

    async def send(self, obj: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            self.writer.write(json.dumps(obj, ensure_ascii=True).encode() + b"\n")
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.gone = True


class Execution:
    """One cell in one context: runs it, streams its outputs, handles timeouts and deaths."""

    def __init__(self, server: Server, ctx: Context, out: Output, reader: asyncio.StreamReader) -> None:
        self.server, self.ctx, self.out, self.reader = server, ctx, out, reader
        self.interrupted = False
        self.error_sent = False
        self.stderr = ""  # the cell's stderr (the start of it): tslab reports errors only there

    async def run(self, code: str, envs: dict[str, str], sandbox_envs: dict[str, str], timeout: float | None) -> None:
        out = self.out
        try:
            await self.ensure_kernel()
            try:
                await self.in_kernel(code, envs, sandbox_envs, timeout)
            except KernelGone:  # it died during the set-up of this run (killed a moment ago)
                await self.died()
        except RequestError as e:
            await out.send({"type": "error", "name": "KernelError", "value": e.message, "traceback": ""})
        await out.send({"type": "end_of_execution"})

    async def ensure_kernel(self) -> None:
        """Start the context's kernel if it has none or it died, saying so when state was lost."""
        ctx = self.ctx
        if await ctx.alive():
            return
        if ctx.km is not None:  # died between two runs
            ctx.died = ctx.died or await ctx.exit_reason()
            await ctx.stop()
        await ctx.start(self.server.runtime_dir)
        if ctx.died:
            await self.out.send({
                "type": "stderr", "timestamp": now(),
                "text": f"[corral] the {ctx.language} kernel of this context had died ({ctx.died});"
                " a new kernel was started and the context's state is lost\n",
            })  # fmt: skip
            ctx.died = None

    async def in_kernel(self, code: str, envs: dict[str, str], sandbox_envs: dict[str, str], timeout: float | None) -> None:
        ctx = self.ctx
        if sandbox_envs and not ctx.sandbox_envs_set:
            setup = set_env_code(ctx.language, sandbox_envs)
            if setup:
                await self.silent(setup[0])
            ctx.sandbox_envs_set = True
        restore = None
        if envs:
            pair = set_env_code(ctx.language, envs)
            if pair:
                await self.silent(pair[0])
                restore = pair[1]
        try:
            await self.cell(code, timeout)
        finally:
            if restore and await ctx.alive():
                await self.silent(restore)

    async def silent(self, code: str) -> None:
        """Run set-up code without output or history; KernelGone if the kernel is dead."""
        kc = self.ctx.kc
        msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        while True:
            try:
                reply = await kc.get_shell_msg(timeout=0.25)
            except Exception:  # queue.Empty
                if not await self.ctx.alive():
                    raise KernelGone() from None
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return

    async def cell(self, code: str, timeout: float | None) -> None:
        ctx, kc = self.ctx, self.ctx.kc
        loop = asyncio.get_running_loop()
        if ctx.ready_at > loop.time():
            await asyncio.sleep(ctx.ready_at - loop.time())
        msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        deadline = loop.time() + timeout if timeout else None
        gone = asyncio.ensure_future(self.reader.read(1))  # EOF (or any byte): the client went away
        reply: asyncio.Future[Any] = asyncio.ensure_future(self.shell_reply(msg_id))
        replied_at: float | None = None
        interrupted_at: float | None = None
        last_interrupt = 0.0
        try:
            while True:
                t = loop.time()
                if replied_at is not None and t - replied_at > REPLY_GRACE:
                    return  # the idle status was lost (iopub dropped messages under a flood)
                if interrupted_at is None:
                    if deadline is not None and t > deadline:
                        await self.interrupt()
                        interrupted_at = last_interrupt = t
                        await self.send_error(
                            "TimeoutError",
                            f"execution timed out after {timeout:g} s; the kernel was interrupted and the"
                            " context keeps its state",
                            [],
                        )
                    elif gone.done():
                        self.out.gone = True
                        await self.interrupt()
                        interrupted_at = last_interrupt = t
                elif t - interrupted_at > DRAIN_AFTER_INTERRUPT:
                    ctx.died = "it did not stop when interrupted"
                    await ctx.stop()
                    return
                elif replied_at is None and t - last_interrupt > REINTERRUPT_EVERY:
                    # ipykernel ignores SIGINT while idle: a signal that arrived before the cell began
                    # was lost, and the cell would run on.
                    await self.interrupt()
                    last_interrupt = t
                if reply.done() and replied_at is None:
                    replied_at = t
                    await self.replied(reply.result())
                try:
                    msg = await kc.get_iopub_msg(timeout=0.25)
                except Exception:  # queue.Empty: nothing within the poll interval
                    if not await ctx.alive():
                        await self.died()
                        return
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if await self.output(msg):
                    if not reply.done():
                        try:
                            await asyncio.wait_for(asyncio.shield(reply), REPLY_GRACE)
                        except TimeoutError:
                            pass
                    if reply.done() and replied_at is None:
                        await self.replied(reply.result())
                    return
        finally:
            gone.cancel()
            reply.cancel()

    async def replied(self, reply: dict[str, Any]) -> None:
        """The execute reply: the execution count, and the error of kernels that report one only
        here (tslab's type errors, say: the message went to stderr)."""
        if reply.get("status") == "error" and self.ctx.language in ("javascript", "typescript"):
            # tslab aborts every request that arrives within 200 ms of an error (its queue reset).
            self.ctx.ready_at = asyncio.get_running_loop().time() + TSLAB_ABORT_WINDOW
        if reply.get("status") == "error" and not self.error_sent and not self.interrupted:
            name, value, traceback = reply.get("ename"), reply.get("evalue"), reply.get("traceback") or []
            if not name and not value:
                name, value = error_from_stderr(self.stderr)
                traceback = [self.stderr.rstrip("\n")]
            await self.send_error(name or "Error", value or "", traceback)
        count = reply.get("execution_count")
        if isinstance(count, int):
            await self.out.send({"type": "number_of_executions", "execution_count": count})

    async def send_error(self, name: str, value: str, traceback: list[str]) -> None:
        self.error_sent = True
        if self.ctx.language == "bash" and not name and value.strip().isdigit():  # bash_kernel: exit status
            name, value = "Error", f"the last command exited with code {value.strip()}"
        await self.out.send({"type": "error", "name": name, "value": value, "traceback": "\n".join(traceback)})

    async def shell_reply(self, msg_id: str) -> dict[str, Any]:
        while True:
            msg = await self.ctx.kc.get_shell_msg(timeout=None)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    async def interrupt(self) -> None:
        self.interrupted = True
        try:
            await self.ctx.km.interrupt_kernel()  # type: ignore[union-attr]
        except Exception:
            log.exception("interrupting context %s", self.ctx.id)

    async def died(self) -> None:
        ctx = self.ctx
        reason = await ctx.exit_reason()
        await ctx.stop()
        ctx.died = reason
        await self.send_error(
            "KernelDiedError",
            f"the {ctx.language} kernel died before or while running this cell ({reason}); the next run"
            " starts a new kernel and the context's state is lost",
            [],
        )

    async def output(self, msg: dict[str, Any]) -> bool:
        """Forward one iopub message; True once the kernel is idle again (the cell ended)."""
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            return bool(content.get("execution_state") == "idle")
        if kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            text = content.get("text") or ""
            if name == "stderr" and len(self.stderr) < 65536:
                self.stderr += text
            for i in range(0, len(text), TEXT_PIECE):
                await self.out.send({"type": name, "text": text[i : i + TEXT_PIECE], "timestamp": now()})
        elif kind in ("execute_result", "display_data"):
            await self.out.send(result(content.get("data") or {}, kind == "execute_result"))
        elif kind == "error" and not self.interrupted:  # after a timeout, its TimeoutError stands
            await self.send_error(content.get("ename", ""), content.get("evalue", ""), content.get("traceback") or [])
        return False


JS_ERROR = re.compile(r"^((?:[A-Za-z_$][\w$]*)?(?:Error|Exception)): ?(.*)$", re.M)
TS_DIAGNOSTIC = re.compile(r"^\d+:\d+ - (.*)$", re.M)


def error_from_stderr(text: str) -> tuple[str, str]:
    """Name and value of an error a kernel only printed: ``SyntaxError: ...`` from a JavaScript
    stack trace, ``1:7 - Type ... is not assignable ...`` from TypeScript's compiler."""
    if m := JS_ERROR.search(text):
        return m.group(1), m.group(2)
    if m := TS_DIAGNOSTIC.search(text):
        return "TypeScriptError", m.group(1)
    lines = text.strip().splitlines()
    return "Error", lines[-1] if lines else ""


def result(data: dict[str, Any], main: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "result", "is_main_result": main}
    extra = {}
    for mime, value in data.items():
        key = MIME_KEYS.get(mime)
        if key is None:
            extra[mime] = value
        elif isinstance(value, list):  # nbformat may split text into lines
            out[key] = "".join(value)
        else:
            out[key] = value
    if extra:
        out["extra"] = extra
    return out


# ---------------------------------------------------------------------------------- serving
async def handle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    out = Output(writer)
    try:
        try:
            line = await reader.readuntil(b"\n")
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            await out.send({"error": {"code": "invalid_request", "message": f"bad request: {e}"}})
            return
        op = req.get("op")
        try:
            if op == "execute":
                await server.execute(req, out, reader)
            elif op in ("contexts", "create_context", "remove_context", "restart_context"):
                fn = getattr(server, "list_contexts" if op == "contexts" else op)
                await out.send(await fn(req))
            else:
                raise RequestError("invalid_request", f"unknown op {op!r}")
        except RequestError as e:
            await out.send({"error": {"code": e.code, "message": e.message}})
    except Exception:
        log.exception("request failed")
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="kernel_server")
    parser.add_argument("--socket", default="/run/corral/kernels.sock")
    parser.add_argument("--runtime-dir", default="/run/corral-kernels")  # the user must reach it
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kernels %(levelname)s %(message)s")
    runtime = Path(args.runtime_dir)
    runtime.mkdir(mode=0o711, parents=True, exist_ok=True)
    server = Server(runtime)
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        listener = await asyncio.start_unix_server(lambda r, w: handle(server, r, w), args.socket, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    log.info("listening on %s; languages: %s", args.socket, ", ".join(sorted(server.languages)))
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    if "python" in server.languages:  # warm the default context in the background
        warm = server.default_context("python")
        asyncio.ensure_future(warm.start(runtime)).add_done_callback(lambda f: f.exception())
    async with listener:
        await listener.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

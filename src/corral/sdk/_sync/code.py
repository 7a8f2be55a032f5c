# generated from _async by scripts/gen_sync.py, do not edit
"""The code interpreter: cells run in Jupyter kernels inside the sandbox, state kept per context."""

from __future__ import annotations

import builtins
import inspect
import json
from collections.abc import Callable
from typing import Any

from corral.errors import InvalidRequestError
from corral.sdk._sync.client import ApiClient
from corral.sdk.execution import CodeContext, Execution, ExecutionError, OutputMessage, Result

# Called with each output as it arrives (an async callback is awaited).
Handler = Callable[[Any], Any]

TIMEOUT_MARGIN = 30.0  # the server ends a timed-out cell; the HTTP read waits this much longer


def _call(handler: Handler | None, value: Any) -> object:
    result = handler(value) if handler is not None else None
    if inspect.isawaitable(result):
        return result
    return result


def _context_id(context: CodeContext | str | None) -> str | None:
    return context.id if isinstance(context, CodeContext) else context


class CodeInterpreter:
    """``sandbox.run_code`` and the code-context calls (the sandbox's template needs kernels:
    ``code-interpreter``)."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{sandbox_id}/code"

    def run_code(
        self,
        code: str,
        language: str | None = None,
        context: CodeContext | str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = None,
        on_stdout: Handler | None = None,
        on_stderr: Handler | None = None,
        on_result: Handler | None = None,
        on_error: Handler | None = None,
    ) -> Execution:
        """Run ``code`` in ``context`` (or in ``language``'s default context; Python if neither).

        Outputs reach the callbacks while the cell runs (``OutputMessage``, ``Result``,
        ``ExecutionError``); the returned ``Execution`` holds them all. An error in the cell,
        a ``timeout`` (seconds; the kernel is interrupted and keeps its state) or a kernel that
        died is ``execution.error``, not an exception.
        """
        if language is not None and context is not None:
            raise InvalidRequestError("give a language or a context, not both")
        body = {"code": code, "language": language, "context_id": _context_id(context), "envs": envs or {},
                "timeout": timeout}  # fmt: skip
        read_timeout = self._api.config.stream_read_timeout
        if timeout is not None:
            read_timeout = max(read_timeout, timeout + TIMEOUT_MARGIN)
        resp = self._api.open_stream("POST", self._base, json=body, read_timeout=read_timeout)
        execution = Execution()
        for line in self._api.iter_lines(resp):
            if not line:
                continue
            event = json.loads(line)
            kind = event.get("type")
            if kind in ("stdout", "stderr"):
                text = event.get("text", "")
                msg = OutputMessage(text, event.get("timestamp"), error=kind == "stderr")
                if kind == "stdout":
                    execution.logs.stdout.append(text)
                    _call(on_stdout, msg)
                else:
                    execution.logs.stderr.append(text)
                    _call(on_stderr, msg)
            elif kind == "result":
                result = Result.from_event(event)
                execution.results.append(result)
                _call(on_result, result)
            elif kind == "error":
                execution.error = ExecutionError(
                    event.get("name", ""), event.get("value", ""), event.get("traceback", "")
                )
                _call(on_error, execution.error)
            elif kind == "number_of_executions":
                execution.execution_count = event.get("execution_count")
            elif kind == "accepted":
                execution.context_id = (event.get("context") or {}).get("id")
        return execution

    def create_context(self, language: str | None = None, cwd: str | None = None) -> CodeContext:
        """A new context with its own kernel (its state never leaks into other contexts)."""
        body: dict[str, Any] = {"language": language}
        if cwd is not None:
            body["cwd"] = cwd
        return CodeContext.from_dict(self._api.request("POST", f"{self._base}/contexts", json=body))

    def list_contexts(self) -> builtins.list[CodeContext]:
        data = self._api.request("GET", f"{self._base}/contexts")
        return [CodeContext.from_dict(c) for c in data["contexts"]]

    def restart_context(self, context: CodeContext | str) -> None:
        """A fresh kernel for the context: its state is lost."""
        self._api.request("POST", f"{self._base}/contexts/{_context_id(context)}/restart")

    def remove_context(self, context: CodeContext | str) -> None:
        self._api.request("DELETE", f"{self._base}/contexts/{_context_id(context)}")

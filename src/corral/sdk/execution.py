"""What ``run_code`` returns: an Execution of results, logs and an error (E2B's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Result keys, in the order formats() lists them (one per MIME type the kernel sent).
FORMATS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript", "data", "chart")


@dataclass
class OutputMessage:
    """A piece of stdout or stderr, as passed to ``on_stdout`` / ``on_stderr``."""

    line: str
    timestamp: str | None = None
    error: bool = False

    def __str__(self) -> str:
        return self.line


@dataclass
class Result:
    """One rich output of a cell: a displayed object, or (``is_main_result``) the cell's value.

    Each format is what the kernel provided: ``png``/``jpeg`` are base64, ``json``/``data``/
    ``chart`` are objects, the others strings; ``extra`` holds any other MIME types.
    """

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: Any = None
    javascript: str | None = None
    data: Any = None
    chart: Any = None
    is_main_result: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Result:
        known = {k: event[k] for k in FORMATS if k in event}
        extra = event.get("extra") if isinstance(event.get("extra"), dict) else {}
        return cls(**known, is_main_result=bool(event.get("is_main_result")), extra=extra or {})

    def formats(self) -> list[str]:
        """The formats this result has (``text`` included when present)."""
        return [k for k in FORMATS if getattr(self, k) is not None] + list(self.extra)

    def __str__(self) -> str:
        return self.text or ""

    # Notebook front ends (Jupyter, IPython) display a Result as what it is.
    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_png_(self) -> str | None:
        return self.png

    def _repr_svg_(self) -> str | None:
        return self.svg

    def _repr_markdown_(self) -> str | None:
        return self.markdown


@dataclass
class Logs:
    """Everything the cell printed, piece by piece."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class ExecutionError:
    """An error the cell raised (or a timeout, or a kernel that died): name, value, traceback."""

    name: str
    value: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class Execution:
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    context_id: str | None = None

    @property
    def text(self) -> str | None:
        """The text of the cell's value (its main result), if it had one."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None


@dataclass
class CodeContext:
    """A kernel's state: variables, imports and cwd persist across runs in one context."""

    id: str
    language: str
    cwd: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeContext:
        return cls(id=data["id"], language=data["language"], cwd=data["cwd"])

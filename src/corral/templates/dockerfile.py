"""Parsing Dockerfiles into instructions (no Docker engine involved).

Supported: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL, CMD, ENTRYPOINT and EXPOSE
(kept as metadata). Anything else is an UnsupportedInstructionError naming the instruction and its
line; a malformed line is a DockerfileError naming the line.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from ..errors import DockerfileError, UnsupportedInstructionError

SUPPORTED = frozenset(
    {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "CMD", "ENTRYPOINT", "EXPOSE"}
)
NEEDS_ARGS = SUPPORTED - {"CMD", "ENTRYPOINT"}
_INSTRUCTION = re.compile(r"^\s*([A-Za-z_]+)(?:\s+(.*))?$", re.S)
_FLAG = re.compile(r"^--([a-z-]+)=(\S*)$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the text after the keyword, continuation lines joined
    line: int  # 1-based line where the instruction starts
    flags: dict[str, str] = field(default_factory=dict)  # --chown=..., --chmod=...

    @property
    def text(self) -> str:
        flags = " ".join(f"--{k}={v}" for k, v in self.flags.items())
        return " ".join(p for p in (self.keyword, flags, self.args) if p)

    def exec_form(self) -> list[str] | None:
        """The JSON array of RUN/CMD/ENTRYPOINT's exec form, or None for the shell form."""
        if not self.args.startswith("["):
            return None
        try:
            value = json.loads(self.args)
        except ValueError:
            return None  # Docker runs a malformed array as a shell command too
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"line {self.line}: {self.keyword} takes a JSON array of strings", line=self.line)
        return value


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, checked for syntax and support (not yet for meaning)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    lines = text.splitlines()
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # comments and parser directives (escape=` is not supported: \\ is the escape)
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            if number == len(lines):
                raise DockerfileError(f"line {start}: the last instruction ends with a line continuation", line=start)
            continue
        pending.append(raw)
        out.append(_instruction(" ".join(p.strip() for p in pending if p.strip()), start))
        pending = []
    if not out:
        raise DockerfileError("the Dockerfile has no instructions", line=0)
    if out[0].keyword not in ("FROM", "ARG") or not any(i.keyword == "FROM" for i in out):
        raise DockerfileError(f"line {out[0].line}: a Dockerfile must start with FROM (ARG may come first)", line=out[0].line)
    froms = [i for i in out if i.keyword == "FROM"]
    if len(froms) > 1:
        raise UnsupportedInstructionError(
            f"line {froms[1].line}: a second FROM (multi-stage builds) is not supported", instruction="FROM", line=froms[1].line
        )
    return out


def _instruction(joined: str, line: int) -> Instruction:
    m = _INSTRUCTION.match(joined)
    if not m:
        raise DockerfileError(f"line {line}: cannot parse {joined[:80]!r}", line=line)
    keyword, rest = m.group(1).upper(), (m.group(2) or "").strip()
    if keyword not in SUPPORTED:
        raise UnsupportedInstructionError(
            f"line {line}: the {keyword} instruction is not supported", instruction=keyword, line=line
        )
    if keyword in NEEDS_ARGS and not rest:
        raise DockerfileError(f"line {line}: {keyword} needs arguments", line=line)
    flags: dict[str, str] = {}
    if keyword in ("COPY", "ADD", "RUN", "FROM"):
        while rest.startswith("--"):
            word, _, after = rest.partition(" ")
            fm = _FLAG.match(word)
            allowed = {"COPY": ("chown", "chmod"), "ADD": ("chown", "chmod")}.get(keyword, ())
            if not fm or fm.group(1) not in allowed:
                raise UnsupportedInstructionError(
                    f"line {line}: {keyword} flag {word.split('=')[0]} is not supported", instruction=keyword, line=line
                )
            flags[fm.group(1)] = fm.group(2)
            rest = after.strip()
    return Instruction(keyword, rest, line, flags)


def substitute(text: str, values: dict[str, str]) -> str:
    """Docker's variable expansion: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alternative}."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = values.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(repl, text.replace("\\$", "\0")).replace("\0", "$")


def key_values(inst: Instruction, values: dict[str, str]) -> dict[str, str]:
    """ENV and LABEL arguments: ``K=V K2="v 2"`` or the legacy ``K V`` form."""
    try:
        words = shlex.split(inst.args)
    except ValueError as e:
        raise DockerfileError(f"line {inst.line}: {inst.keyword}: {e}", line=inst.line) from None
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise DockerfileError(f"line {inst.line}: {inst.keyword} needs a value", line=inst.line)
        return {words[0]: substitute(" ".join(words[1:]), values)}
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise DockerfileError(f"line {inst.line}: {inst.keyword}: {word!r} is not KEY=VALUE", line=inst.line)
        out[key] = substitute(value, {**values, **out})
    return out


def arg_default(inst: Instruction) -> tuple[str, str | None]:
    """ARG name[=default]."""
    name, sep, default = inst.args.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise DockerfileError(f"line {inst.line}: ARG {name!r} is not a valid name", line=inst.line)
    if not sep:
        return name, None
    try:
        words = shlex.split(default)
    except ValueError as e:
        raise DockerfileError(f"line {inst.line}: ARG: {e}", line=inst.line) from None
    return name, " ".join(words)


def paths(inst: Instruction, values: dict[str, str]) -> tuple[list[str], str]:
    """COPY/ADD sources and destination, in either the JSON or the space-separated form."""
    words: list[str]
    if inst.args.startswith("["):
        try:
            words = json.loads(inst.args)
        except ValueError:
            raise DockerfileError(f"line {inst.line}: {inst.keyword}: malformed JSON array", line=inst.line) from None
    else:
        words = inst.args.split()
    words = [substitute(w, values) for w in words]
    if len(words) < 2:
        raise DockerfileError(f"line {inst.line}: {inst.keyword} needs a source and a destination", line=inst.line)
    return words[:-1], words[-1]

""".dockerignore matching, as Docker does it (shared by the SDK, which leaves ignored files out of
the context it uploads, and the server, which applies the file again to what it received).

Patterns use Go's filepath.Match syntax (``*``, ``?``, ``[...]``) plus ``**`` for any number of
directories; a leading ``!`` re-includes; the last matching pattern wins; a pattern that matches
a directory excludes everything under it. Paths are relative to the context, ``/``-separated.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path


class DockerIgnore:
    def __init__(self, text: str = "") -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = posixpath.normpath(line.lstrip("/")) if line.strip("/") else ""
            if line and line != ".":
                self.rules.append((negate, re.compile(_translate(line))))

    @classmethod
    def of(cls, context: Path) -> DockerIgnore:
        try:
            return cls((context / ".dockerignore").read_text(errors="replace"))
        except OSError:
            return cls()

    def ignored(self, rel: str) -> bool:
        """Whether ``rel`` (or a directory above it) is excluded."""
        parts = rel.strip("/").split("/")
        excluded = False
        for negate, pattern in self.rules:
            # a pattern matching a parent dir applies to everything below it
            hit = any(pattern.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))
            if hit:
                excluded = not negate
        return excluded

    def walk(self, context: Path) -> Iterator[str]:
        """Relative paths (dirs, then their entries) of what the context keeps, never following symlinks.

        An ignored directory is still entered when a ``!`` rule might re-include something below it.
        """
        has_negations = any(negate for negate, _ in self.rules)
        for dirpath, dirnames, filenames in os.walk(context):
            rel_dir = os.path.relpath(dirpath, context)
            rel_dir = "" if rel_dir == "." else rel_dir
            keep_dirs = []
            for d in sorted(dirnames):
                rel = posixpath.join(rel_dir, d) if rel_dir else d
                if os.path.islink(os.path.join(dirpath, d)):
                    if not self.ignored(rel):
                        yield rel
                    continue
                if not self.ignored(rel):
                    yield rel
                    keep_dirs.append(d)
                elif has_negations:
                    keep_dirs.append(d)
            dirnames[:] = keep_dirs
            for f in sorted(filenames):
                rel = posixpath.join(rel_dir, f) if rel_dir else f
                if not self.ignored(rel):
                    yield rel


def _translate(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" : zero or more directories
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!") else re.escape(body)) + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)

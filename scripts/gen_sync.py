"""Generate the sync SDK (src/corral/sdk/_sync/) from the async core (src/corral/sdk/_async/).

A small unasync: the async sources are tokenized and rewritten token by token
(``async def`` -> ``def``, ``await x`` -> ``x``, ``async with``/``async for`` -> ``with``/``for``,
``AsyncFoo`` -> ``Foo``, ``__aenter__`` -> ``__enter__``, ``aclose`` -> ``close``, ``_async`` ->
``_sync``, ...), the same words are rewritten in docstrings and comments, and the result is
tidied with ruff (imports sorted and deduplicated, formatted).

    python scripts/gen_sync.py          # rewrite src/corral/sdk/_sync/
    python scripts/gen_sync.py --check  # exit 1 if the committed _sync/ differs (make lint)
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "corral" / "sdk" / "_async"
DST = ROOT / "src" / "corral" / "sdk" / "_sync"

HEADER = "# generated from _async by scripts/gen_sync.py, do not edit\n"
SYNC_INIT = '"""The sync SDK, generated from ``corral.sdk._async`` by scripts/gen_sync.py."""\n'

NAMES = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "StopAsyncIteration": "StopIteration",
    "aclose": "close",
    "aread": "read",
    "aiter_bytes": "iter_bytes",
    "aiter_lines": "iter_lines",
    "aiter_raw": "iter_raw",
    "aiter_text": "iter_text",
    "asynccontextmanager": "contextmanager",
    "_async": "_sync",
}
ASYNC_PREFIX = re.compile(r"^Async(?=[A-Z])")  # AsyncSandbox -> Sandbox, AsyncIterator -> Iterator
WORD = re.compile(r"\b[A-Za-z_]\w*\b")


def rename(name: str) -> str:
    return NAMES.get(name) or ASYNC_PREFIX.sub("", name)


def rewrite_text(text: str) -> str:
    """The same translation for prose (docstrings, comments)."""
    text = re.sub(r"\bawait\s+", "", text)
    text = re.sub(r"\basync\s+(?=(def|with|for)\b)", "", text)
    return WORD.sub(lambda m: rename(m.group(0)), text)


def unasync(source: str) -> str:
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1]

    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), in source order
    for i, tok in enumerate(tokens):
        start, end = offset(tok.start), offset(tok.end)
        if tok.type == tokenize.NAME:
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            drop = tok.string == "await" or (
                tok.string == "async" and nxt is not None and nxt.string in ("def", "with", "for")
            )
            if drop:
                # remove the keyword and the blank that follows it on the same line
                if nxt is not None and nxt.start[0] == tok.end[0]:
                    end = offset(nxt.start)
                edits.append((start, end, ""))
            elif rename(tok.string) != tok.string:
                edits.append((start, end, rename(tok.string)))
        elif tok.type in (tokenize.STRING, tokenize.COMMENT):
            new = rewrite_text(tok.string)
            if new != tok.string:
                edits.append((start, end, new))
    out = source
    for start, end, new in reversed(edits):
        out = out[:start] + new + out[end:]
    return HEADER + out


def ruff(args: list[str], source: str, filename: str) -> str:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        sys.exit("gen_sync: ruff is needed to tidy the generated code (pip install ruff)")
    proc = subprocess.run(
        [exe, *args, "--stdin-filename", filename, "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode not in (0, 1) or not proc.stdout:
        sys.exit(f"gen_sync: ruff {' '.join(args)} failed on {filename}:\n{proc.stderr}")
    return proc.stdout


def generate() -> dict[Path, str]:
    """Every file of _sync/ as it should be, keyed by path."""
    out: dict[Path, str] = {DST / "__init__.py": HEADER + SYNC_INIT}
    for src in sorted(SRC.glob("*.py")):
        if src.name == "__init__.py":
            continue
        dst = DST / src.name
        text = unasync(src.read_text())
        filename = str(dst.relative_to(ROOT))
        # known-first-party: the target folder may not exist yet, so ruff cannot infer it
        # UP028: `async for x in y: yield x` becomes `yield from y`
        fix = ["check", "--fix-only", "--unsafe-fixes", "--select", "I,F401,F811,UP028", "--quiet"]
        text = ruff([*fix, "--config", "lint.isort.known-first-party=['corral']"], text, filename)
        text = ruff(["format", "--quiet"], text, filename)
        out[dst] = text
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if src/corral/sdk/_sync/ is stale")
    args = parser.parse_args()
    wanted = generate()
    present = {p for p in DST.glob("*.py")} if DST.exists() else set()
    stale = sorted(p for p, text in wanted.items() if not p.exists() or p.read_text() != text)
    extra = sorted(present - set(wanted))
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}", file=sys.stderr)
        for p in extra:
            print(f"not generated from _async: {p.relative_to(ROOT)}", file=sys.stderr)
        if stale or extra:
            print("run: python scripts/gen_sync.py", file=sys.stderr)
            return 1
        return 0
    DST.mkdir(exist_ok=True)
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    for p in extra:
        p.unlink()
        print(f"removed {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

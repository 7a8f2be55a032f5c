"""Secrets: values the sandboxes never see. A sandbox given one gets its placeholder in an
environment variable of the secret's name; the egress proxy puts the value in place of the
placeholder in request headers going to the secret's allowed hosts only.

Kept in ``<data dir>/secrets.json`` (0600, written whole and renamed into place).
"""

from __future__ import annotations

import json
import os
import re
import secrets as random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import errors
from ..schema import DOMAIN_PATTERN

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True)
class Secret:
    name: str
    value: str
    hosts: tuple[str, ...]
    placeholder: str

    def public(self) -> dict[str, object]:
        """What the API shows: never the value."""
        return {"name": self.name, "hosts": list(self.hosts), "placeholder": self.placeholder}


class SecretStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Secret]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {s["name"]: Secret(s["name"], s["value"], tuple(s["hosts"]), s["placeholder"]) for s in raw}

    def _save(self, items: dict[str, Secret]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # SECURITY: the values are the point of this file: 0600 from the start.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(s) for s in items.values()], f)
        tmp.rename(self.path)

    def put(self, name: str, value: str, hosts: list[str]) -> Secret:
        if not NAME.fullmatch(name):
            raise errors.InvalidRequestError("a secret's name is an environment variable name (letters, digits, _)")
        if not value or len(value) > 8192 or any(c in value for c in "\0\r\n"):
            raise errors.InvalidRequestError("a secret's value is 1 to 8192 characters, without NUL or line breaks")
        hosts = [h.strip().lower().rstrip(".") for h in hosts]
        if not hosts or not all(DOMAIN_PATTERN.fullmatch(h) for h in hosts):
            raise errors.InvalidRequestError("allowed hosts are domain names (example.com, *.example.com), at least one")
        with self._lock:
            items = self._load()
            placeholder = f"corral-secret-{name.lower()}-{random.token_hex(12)}"
            items[name] = Secret(name, value, tuple(hosts), placeholder)
            self._save(items)
            return items[name]

    def get(self, names: list[str]) -> list[Secret]:
        items = self._load()
        missing = [n for n in names if n not in items]
        if missing:
            raise errors.SecretNotFoundError(f"no secret named {', '.join(missing)}")
        return [items[n] for n in names]

    def list(self) -> list[Secret]:
        return sorted(self._load().values(), key=lambda s: s.name)

    def delete(self, name: str) -> None:
        with self._lock:
            items = self._load()
            if items.pop(name, None) is None:
                raise errors.SecretNotFoundError(f"no secret named {name}")
            self._save(items)

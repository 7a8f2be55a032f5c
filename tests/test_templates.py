"""Template recipes and the cache: a recipe's hash names its build; owners are shifted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from corral.errors import TemplateNotFoundError
from corral.templates import list_templates, template_path
from corral.templates.recipes import BASE, Recipe
from corral.templates.shift import HOST_UID_BASE, shift_owners
from helpers import TEMPLATES_DIR


def test_recipe_digest_changes_with_the_recipe() -> None:
    assert BASE.digest() == Recipe(**{**BASE.__dict__}).digest()
    assert BASE.digest() != Recipe(**{**BASE.__dict__, "packages": (*BASE.packages, "jq")}).digest()


def test_base_template_is_built_with_shifted_owners_and_the_user() -> None:
    rootfs = template_path(TEMPLATES_DIR, "base")
    meta = json.loads((TEMPLATES_DIR / "base" / "current.json").read_text())
    assert meta["digest"] == BASE.digest() and Path(meta["rootfs"]) == rootfs
    assert (rootfs / "usr/bin/python3").exists() and (rootfs / "usr/bin/node").exists()
    assert (rootfs / "usr/bin").stat().st_uid == HOST_UID_BASE
    home = rootfs / "home/user"
    assert (home.stat().st_uid, home.stat().st_gid) == (HOST_UID_BASE + 1000, HOST_UID_BASE + 1000)
    assert "user:x:1000:1000" in (rootfs / "etc/passwd").read_text()
    assert any(t["name"] == "base" for t in list_templates(TEMPLATES_DIR))


def test_unknown_template_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateNotFoundError):
        template_path(tmp_path, "nope")


def test_shift_owners_keeps_setuid_bits_and_is_idempotent(tmp_path: Path) -> None:
    f = tmp_path / "su"
    f.write_text("x")
    os.chmod(f, 0o4755)
    link = tmp_path / "link"
    link.symlink_to("su")
    assert shift_owners(tmp_path) == 3  # the dir, the file, the symlink
    assert f.stat().st_uid == HOST_UID_BASE and f.stat().st_mode & 0o7777 == 0o4755
    assert link.lstat().st_uid == HOST_UID_BASE
    assert shift_owners(tmp_path) == 0

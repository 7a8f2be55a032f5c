"""`python -m corral.templates ensure [NAME] [--templates-dir DIR]`: build a template if its recipe changed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..settings import Settings
from .builder import _progress_printer, ensure_template


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m corral.templates")
    parser.add_argument("action", choices=["ensure"])
    parser.add_argument("name", nargs="?", default="base")
    parser.add_argument("--templates-dir", type=Path)
    args = parser.parse_args()
    templates_dir = args.templates_dir or Settings.load().templates_dir
    print(ensure_template(templates_dir, args.name, progress=_progress_printer()))


if __name__ == "__main__":
    main()

"""Write the OpenAPI document of corral's REST API to spec/openapi.json (`--check` compares)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from corral.server.app import create_app
from corral.settings import Settings

SPEC = Path(__file__).resolve().parent.parent / "spec" / "openapi.json"


def render() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp), api_key="unused"))
        return json.dumps(app.openapi(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not SPEC.exists() or SPEC.read_text() != text:
            print("spec/openapi.json is stale: run `make spec`", file=sys.stderr)
            return 1
        return 0
    SPEC.parent.mkdir(exist_ok=True)
    SPEC.write_text(text)
    print(f"wrote {SPEC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

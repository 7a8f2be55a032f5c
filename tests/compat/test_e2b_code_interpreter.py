"""The seam for the code interpreter: `e2b-code-interpreter` reaches sandbox port 49999, which
answers 501 (a clean SandboxException) until corral's interpreter is wired into
compat/e2b/interpreter.py. When it is, these tests become its real tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

ci = pytest.importorskip("e2b_code_interpreter")

from e2b import SandboxException  # noqa: E402

pytestmark = pytest.mark.privileged


@pytest.fixture()
def ci_sbx(e2b_env: object) -> Iterator[object]:
    # The interpreter's template (code-interpreter-v1 = corral's code-interpreter) is not built
    # here yet; the routing under test is the same for any sandbox.
    sandbox = ci.Sandbox.create(template="base")
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_run_code_reaches_the_interpreter_port(ci_sbx: ci.Sandbox) -> None:
    with pytest.raises(SandboxException, match=r"code interpreter .*not available"):
        ci_sbx.run_code("1 + 1")
    with pytest.raises(SandboxException, match=r"code interpreter .*not available"):
        ci_sbx.create_code_context()
    assert ci_sbx.commands.run("echo envd still works").stdout == "envd still works\n"

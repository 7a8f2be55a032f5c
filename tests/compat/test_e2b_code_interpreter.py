"""The official `e2b-code-interpreter` SDK against corral's code interpreter (port 49999), unchanged:
real kernels in real code-interpreter sandboxes behind a real server."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

ci = pytest.importorskip("e2b_code_interpreter")

from e2b import SandboxException, TimeoutException  # noqa: E402

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def ci_sbx(corral_server: object) -> Iterator[object]:
    import os

    from .conftest import e2b_environ

    saved = {k: os.environ.get(k) for k in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN")}
    os.environ.update(e2b_environ(corral_server))  # type: ignore[arg-type]
    sandbox = ci.Sandbox.create(timeout=600)  # the SDK's default template: code-interpreter-v1
    try:
        yield sandbox
    finally:
        sandbox.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_state_results_and_errors(ci_sbx: ci.Sandbox) -> None:
    ci_sbx.run_code("x = 40")
    execution = ci_sbx.run_code("x + 2")
    assert execution.text == "42" and execution.error is None
    assert execution.execution_count is not None
    failed = ci_sbx.run_code("1 / 0")
    assert failed.error is not None and failed.error.name == "ZeroDivisionError"
    assert "division by zero" in failed.error.value


def test_a_matplotlib_chart_and_a_dataframe(ci_sbx: ci.Sandbox) -> None:
    chart = ci_sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    pngs = [r.png for r in chart.results if r.png]
    assert pngs and base64.b64decode(pngs[0]).startswith(b"\x89PNG")
    frame = ci_sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert frame.results[0].html and "<table" in frame.results[0].html


def test_streaming_callbacks(ci_sbx: ci.Sandbox) -> None:
    out, err, results = [], [], []
    ci_sbx.run_code(
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n7",
        on_stdout=lambda m: out.append(m.line), on_stderr=lambda m: err.append(m.line),
        on_result=lambda r: results.append(r.text),
    )  # fmt: skip
    assert out == ["to stdout\n"] and err == ["to stderr\n"] and results == ["7"]


def test_contexts(ci_sbx: ci.Sandbox) -> None:
    ctx = ci_sbx.create_code_context(cwd="/tmp")
    assert ctx.language == "python" and ctx.cwd == "/tmp"
    ci_sbx.run_code("own = 1", context=ctx)
    assert ci_sbx.run_code("import os\nos.getcwd()", context=ctx).text == "'/tmp'"
    assert ci_sbx.run_code("own").error is not None  # the default context does not see it
    assert ctx.id in [c.id for c in ci_sbx.list_code_contexts()]
    ci_sbx.restart_code_context(ctx)
    assert ci_sbx.run_code("own", context=ctx).error is not None  # a fresh kernel
    ci_sbx.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in ci_sbx.list_code_contexts()]
    with pytest.raises(Exception, match="not found"):
        ci_sbx.run_code("1", context=ctx)


def test_other_languages(ci_sbx: ci.Sandbox) -> None:
    js = ci_sbx.run_code("console.log('from js')", language="js")
    assert js.logs.stdout == ["from js\n"]
    assert ci_sbx.run_code("echo from bash", language="bash").logs.stdout == ["from bash\n"]


def test_a_client_timeout_interrupts_and_the_context_goes_on(ci_sbx: ci.Sandbox) -> None:
    ctx = ci_sbx.create_code_context()
    ci_sbx.run_code("kept = 'yes'", context=ctx)
    with pytest.raises(TimeoutException):
        ci_sbx.run_code("while True: pass", context=ctx, timeout=2)
    assert ci_sbx.run_code("kept", context=ctx, timeout=30).text == "'yes'"


def test_a_template_without_kernels_gets_a_clean_error(e2b_env: object) -> None:
    sandbox = ci.Sandbox.create(template="base")
    try:
        with pytest.raises(SandboxException):
            sandbox.run_code("1 + 1")
        assert sandbox.commands.run("echo envd still works").stdout == "envd still works\n"
    finally:
        sandbox.kill()

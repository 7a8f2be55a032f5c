"""The code interpreter: real Jupyter kernels in a real code-interpreter sandbox, through the server."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from corral import (
    CodeContext,
    ContextNotFoundError,
    InvalidRequestError,
    NotSupportedError,
    Sandbox,
)
from helpers import ServerProcess, assert_clean, wait_until

pytestmark = pytest.mark.privileged

TEMPLATE = "code-interpreter"
Fresh = Callable[..., CodeContext]


@pytest.fixture(scope="module")
def ci(corral_server: ServerProcess) -> Iterator[Sandbox]:
    """One code-interpreter sandbox for the module (tests that need a fresh state use contexts)."""
    with Sandbox.create(
        template=TEMPLATE, timeout=1800, api_key=corral_server.api_key, api_url=corral_server.url
    ) as s:
        yield s


@pytest.fixture()
def fresh(ci: Sandbox) -> Iterator[Fresh]:
    """Makes new contexts, removed after the test (each one is a kernel holding memory)."""
    made: list[CodeContext] = []

    def make(language: str = "python", cwd: str | None = None) -> CodeContext:
        made.append(ci.create_code_context(language=language, cwd=cwd))
        return made[-1]

    yield make
    for ctx in made:
        try:
            ci.remove_code_context(ctx)
        except ContextNotFoundError:
            pass


# ------------------------------------------------------------------------------------ python
def test_state_persists_and_the_last_expression_is_the_main_result(ci: Sandbox, fresh: Fresh) -> None:
    ctx = fresh()
    first = ci.run_code("import math\nx = 20\nprint('set')", context=ctx)
    assert first.error is None and first.logs.stdout == ["set\n"] and first.results == []
    second = ci.run_code("x + math.floor(1.5) + 21", context=ctx)
    assert second.text == "42"
    assert [r.is_main_result for r in second.results] == [True]
    assert second.execution_count == first.execution_count + 1  # type: ignore[operator]
    assert second.context_id == ctx.id


def test_error_has_name_value_and_traceback_and_keeps_earlier_output(ci: Sandbox, fresh: Fresh) -> None:
    ctx = fresh()
    execution = ci.run_code("print('before')\ndef f():\n    return 1 / 0\nf()", context=ctx)
    assert execution.logs.stdout == ["before\n"]
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "ZeroDivisionError" in execution.error.traceback and "f()" in execution.error.traceback
    assert ci.run_code("1 + 1", context=ctx).text == "2"  # the context goes on


def test_outputs_stream_in_order_while_the_cell_runs(ci: Sandbox, fresh: Fresh) -> None:
    seen: list[tuple[str, str, float]] = []
    code = (
        "import sys, time\n"
        "print('one', flush=True)\n"
        "time.sleep(1.0)\n"
        "print('two', file=sys.stderr, flush=True)\n"
        "display('shown')\n"
        "'value'"
    )
    start = time.monotonic()
    execution = ci.run_code(
        code, context=fresh(),
        on_stdout=lambda m: seen.append(("stdout", m.line, time.monotonic())),
        on_stderr=lambda m: seen.append(("stderr", m.line, time.monotonic())),
        on_result=lambda r: seen.append(("result", r.text or "", time.monotonic())),
    )  # fmt: skip
    ended = time.monotonic()
    assert [(k, v) for k, v, _ in seen] == [
        ("stdout", "one\n"), ("stderr", "two\n"), ("result", "'shown'"), ("result", "'value'")
    ]  # fmt: skip
    assert seen[0][2] - start < ended - start - 0.8, "stdout arrived only when the cell ended"
    assert [r.is_main_result for r in execution.results] == [False, True]
    assert execution.logs.stderr == ["two\n"]


def test_matplotlib_figure_comes_back_as_png_without_show(ci: Sandbox, fresh: Fresh) -> None:
    execution = ci.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.title('t')", context=fresh()
    )
    assert execution.error is None
    pngs = [r for r in execution.results if r.png]
    assert len(pngs) == 1 and not pngs[0].is_main_result
    assert base64.b64decode(pngs[0].png or "").startswith(b"\x89PNG\r\n\x1a\n")
    assert "png" in pngs[0].formats()


def test_dataframe_comes_back_as_html_and_text(ci: Sandbox, fresh: Fresh) -> None:
    execution = ci.run_code(
        "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})", context=fresh()
    )
    (result,) = execution.results
    assert result.is_main_result
    assert "<table" in (result.html or "") and "<td>x</td>" in (result.html or "")
    assert "a" in (result.text or "") and "y" in (result.text or "")


def test_display_of_several_objects_yields_several_results(ci: Sandbox, fresh: Fresh) -> None:
    execution = ci.run_code(
        "from IPython.display import display, HTML, Markdown\n"
        "display(1)\ndisplay(HTML('<b>bold</b>'))\ndisplay(Markdown('*m*'))\n'last'",
        context=fresh(),
    )
    assert [r.is_main_result for r in execution.results] == [False, False, False, True]
    assert execution.results[0].text == "1"
    assert execution.results[1].html == "<b>bold</b>"
    assert execution.results[2].markdown == "*m*"
    assert execution.text == "'last'"


def test_timeout_interrupts_the_kernel_and_the_context_keeps_its_state(ci: Sandbox, fresh: Fresh) -> None:
    ctx = fresh()
    ci.run_code("kept = 'yes'", context=ctx)
    t0 = time.monotonic()
    execution = ci.run_code("import time\nwhile True: time.sleep(0.1)", context=ctx, timeout=1)
    assert time.monotonic() - t0 < 15
    assert execution.error is not None and execution.error.name == "TimeoutError"
    assert ci.run_code("kept", context=ctx).text == "'yes'"


def test_a_client_that_goes_away_interrupts_its_cell(
    ci: Sandbox, corral_server: ServerProcess, fresh: Fresh
) -> None:
    ctx = fresh()
    ci.run_code("state = 5", context=ctx)
    with (
        corral_server.client() as http,
        http.stream(
            "POST",
            f"/v1/sandboxes/{ci.sandbox_id}/code",
            json={"code": "while True: pass", "context_id": ctx.id},
        ) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if json.loads(line)["type"] == "accepted":
                break
    # The busy loop was interrupted: the next cell of the same context runs at once.
    t0 = time.monotonic()
    assert ci.run_code("state * 2", context=ctx, timeout=20).text == "10"
    assert time.monotonic() - t0 < 15


def test_restart_gives_a_fresh_kernel(ci: Sandbox, fresh: Fresh) -> None:
    ctx = fresh()
    ci.run_code("gone = 1", context=ctx)
    ci.restart_code_context(ctx)
    execution = ci.run_code("gone", context=ctx)
    assert execution.error is not None and execution.error.name == "NameError"


def test_contexts_are_isolated_and_can_be_listed_and_removed(ci: Sandbox, fresh: Fresh) -> None:
    a, b = fresh(), fresh(cwd="/tmp")
    ci.run_code("import os\nsecret = 'a'\nos.chdir('/etc')", context=a)
    leaked = ci.run_code("secret", context=b)
    assert leaked.error is not None and leaked.error.name == "NameError"
    assert ci.run_code("import os\nos.getcwd()", context=b).text == "'/tmp'"
    assert ci.run_code("os.getcwd()", context=a).text == "'/etc'"
    ids = {c.id for c in ci.list_code_contexts()}
    assert {a.id, b.id} <= ids and "python" in ids  # the default context exists from the start
    ci.remove_code_context(b)
    assert b.id not in {c.id for c in ci.list_code_contexts()}
    with pytest.raises(ContextNotFoundError):
        ci.run_code("1", context=b)


def test_envs_apply_to_one_run_and_sandbox_envs_to_all(corral_server: ServerProcess) -> None:
    with Sandbox.create(
        template=TEMPLATE,
        envs={"SANDBOX_WIDE": "everywhere"},
        api_key=corral_server.api_key,
        api_url=corral_server.url,
    ) as s:
        code = "import os\n(os.environ.get('ONCE'), os.environ.get('SANDBOX_WIDE'))"
        assert s.run_code(code, envs={"ONCE": "it's here"}).text == "(\"it's here\", 'everywhere')"
        assert s.run_code(code).text == "(None, 'everywhere')"
        bash = s.run_code('echo "$ONCE/$SANDBOX_WIDE"', language="bash", envs={"ONCE": "b"})
        assert bash.logs.stdout == ["b/everywhere\n"]


# ------------------------------------------------------------------------- other languages
LANGUAGES = {
    # language: (set state, use it -> expected stdout, failing code, expected error name, value part)
    "javascript": ("var a = 21;", "console.log(a * 2)", "JSON.parse('{')", "SyntaxError", "JSON"),
    "typescript": ("const b: number = 21;", "console.log(b * 2)", "throw new Error('boom')", "Error", "boom"),
    "bash": ("A=21", "echo $((A * 2))", "ls /nonexistent", "", ""),
    "r": ("z <- 21", "cat(z * 2, '\\n')", "stop('boom')", "", "boom"),
}


@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_each_language_keeps_state_streams_and_reports_errors(
    ci: Sandbox, language: str, fresh: Fresh
) -> None:
    setup, use, failing, name, value = LANGUAGES[language]
    ctx = fresh(language)
    assert ctx.language == language
    assert ci.run_code(setup, context=ctx).error is None
    out = ci.run_code(use, context=ctx)
    assert out.error is None, out.error
    assert "".join(out.logs.stdout).strip() == "42"
    err = ci.run_code(failing, context=ctx)
    assert err.error is not None, f"{language}: {err}"
    assert err.error.name == name or not name
    assert value in err.error.value + err.error.traceback
    assert "".join(ci.run_code(use, context=ctx).logs.stdout).strip() == "42"  # state survived the error


def test_r_values_come_back_as_results(ci: Sandbox) -> None:
    execution = ci.run_code("data.frame(x = c(1, 2), y = c('a', 'b'))", language="r")
    assert execution.error is None
    assert any("<table" in (r.html or "") for r in execution.results)


def test_typescript_types_are_checked(ci: Sandbox) -> None:
    execution = ci.run_code("const n: number = 'not a number';", language="typescript")
    assert execution.error is not None


# ------------------------------------------------------------------------- dying kernels
@pytest.mark.parametrize(
    "crash", ["import os\nos._exit(3)", "import ctypes\nctypes.string_at(0)"], ids=["exit", "segfault"]
)
def test_a_dead_kernel_is_reported_then_restarted_with_a_message(
    ci: Sandbox, crash: str, fresh: Fresh
) -> None:
    ctx = fresh()
    ci.run_code("lost = 1", context=ctx)
    died = ci.run_code(crash, context=ctx, timeout=60)
    assert died.error is not None and died.error.name == "KernelDiedError", died
    after = ci.run_code("1 + 1", context=ctx)
    assert after.text == "2"
    assert any("had died" in line for line in after.logs.stderr)
    assert ci.run_code("lost", context=ctx).error is not None  # a new kernel: the state is gone


def test_a_kernel_killed_from_a_command_is_restarted(ci: Sandbox, fresh: Fresh) -> None:
    ctx = fresh()
    pid = ci.run_code("import os\nos.getpid()", context=ctx).text
    # Killed, and gone (a zombie until the kernel server reaps it) before the next cell.
    ci.commands.run(f"kill -9 {pid}; while ps -o stat= -p {pid} | grep -qv Z; do sleep 0.05; done")
    after = ci.run_code("'alive'", context=ctx)
    assert after.text == "'alive'"
    assert any("had died" in line and "SIGKILL" in line for line in after.logs.stderr)


def test_a_kernel_out_of_memory_is_reported(corral_server: ServerProcess) -> None:
    with Sandbox.create(template=TEMPLATE, memory_mb=256, disk_mb=64, api_key=corral_server.api_key,
                        api_url=corral_server.url) as s:  # fmt: skip
        ctx = s.create_code_context()
        died = s.run_code("hog = b'x' * (2 << 30)", context=ctx, timeout=120)
        assert died.error is not None
        assert died.error.name in ("KernelDiedError", "MemoryError"), died.error
        assert s.run_code("1 + 1", context=ctx).text == "2"


# ------------------------------------------------------------------------- bad input
def test_output_floods_and_binary_garbage_do_not_hurt(corral_server: ServerProcess) -> None:
    with Sandbox.create(template=TEMPLATE, api_key=corral_server.api_key, api_url=corral_server.url) as s:
        ctx, other = s.create_code_context(), s.create_code_context()
        s.run_code("kept = 1", context=other)
        got = 0

        def count(msg: object) -> None:
            nonlocal got
            got += len(str(msg))

        flood = s.run_code("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1_000_000)", context=ctx,
                           on_stdout=count, timeout=300)  # fmt: skip
        assert flood.error is None
        assert got == 100_000_000
        garbage = s.run_code(
            "import os, sys\nos.write(1, bytes(range(256)) * 4)\nsys.stdout.flush()\n'done'", context=ctx
        )
        assert garbage.text == "'done'"
        assert s.run_code("kept", context=other).text == "1"


def test_bad_requests_get_clear_errors(ci: Sandbox, corral_server: ServerProcess) -> None:
    with pytest.raises(InvalidRequestError, match="unknown language"):
        ci.run_code("1", language="cobol")
    with pytest.raises(ContextNotFoundError):
        ci.run_code("1", context="no-such-context")
    with pytest.raises(InvalidRequestError):
        ci.run_code("1", language="python", context="python")
    with pytest.raises(InvalidRequestError, match="unknown language"):
        ci.create_code_context(language="cobol")
    with corral_server.client() as http:
        base = f"/v1/sandboxes/{ci.sandbox_id}/code"
        for body in ({"code": 1}, {"code": "1", "timeout": -1}, {"code": "1", "surprise": True},
                     {"code": "1", "language": "python", "context_id": "python"}):  # fmt: skip
            r = http.post(base, json=body)
            assert r.status_code == 400 and set(r.json()) == {"code", "message"}, (body, r.text)
        r = http.post(base + "/contexts", json={"cwd": "/no/such/dir"})
        assert r.status_code == 404 and r.json()["code"] == "file_not_found"
        assert http.delete(base + "/contexts/nope").json()["code"] == "context_not_found"
        assert http.post(base, json={"code": "1"}, headers={"X-API-Key": "wrong"}).status_code == 401


def test_run_code_on_a_template_without_kernels_says_so(sbx: Sandbox) -> None:
    with pytest.raises(NotSupportedError, match="code-interpreter"):
        sbx.run_code("1")


# ------------------------------------------------------------------------- REST, start-up, cleanup
def test_rest_streams_ndjson_and_sse(ci: Sandbox, corral_server: ServerProcess) -> None:
    with corral_server.client() as http:
        r = http.post(f"/v1/sandboxes/{ci.sandbox_id}/code", json={"code": "print('hi')\n40 + 2"})
        events = [json.loads(line) for line in r.text.splitlines()]
        assert [e["type"] for e in events] == [
            "accepted",
            "stdout",
            "result",
            "number_of_executions",
            "end_of_execution",
        ]
        assert events[2]["text"] == "42" and events[2]["is_main_result"] is True
        r = http.post(
            f"/v1/sandboxes/{ci.sandbox_id}/code", json={"code": "1"}, headers={"Accept": "text/event-stream"}
        )
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "event: result\ndata: " in r.text and "event: end_of_execution" in r.text


def test_the_default_kernel_starts_with_the_sandbox(corral_server: ServerProcess) -> None:
    with Sandbox.create(template=TEMPLATE, api_key=corral_server.api_key, api_url=corral_server.url) as s:
        wait_until(lambda: "ipykernel_launcher" in s.commands.run("ps -eo args").stdout, timeout=60,
                   what="the default Python kernel")  # fmt: skip
        assert [c.id for c in s.list_code_contexts()] == ["python"]


def test_concurrent_cells_in_different_contexts(ci: Sandbox, fresh: Fresh) -> None:
    a, b = fresh(), fresh()
    results: dict[str, float] = {}

    def run(ctx: CodeContext, name: str) -> None:
        t0 = time.monotonic()
        ci.run_code("import time\ntime.sleep(2)", context=ctx)
        results[name] = time.monotonic() - t0

    threads = [threading.Thread(target=run, args=(c, n)) for c, n in ((a, "a"), (b, "b"))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 3.8, results  # ran side by side, not one after the other


def test_a_killed_code_sandbox_leaves_nothing_behind(corral_server: ServerProcess) -> None:
    s = Sandbox.create(template=TEMPLATE, api_key=corral_server.api_key, api_url=corral_server.url)
    s.run_code("x = 1")
    s.run_code("1", language="bash")
    sid = s.sandbox_id
    s.kill()
    s.close()
    assert_clean(corral_server.run_dir, {sid})


def test_a_killed_kernel_server_comes_back_on_the_next_cell(corral_server: ServerProcess) -> None:
    with Sandbox.create(template=TEMPLATE, api_key=corral_server.api_key, api_url=corral_server.url) as s:
        assert s.run_code("x = 1\nx").text == "1"
        s.commands.run("pkill -9 -f '[k]ernel_server'; pkill -9 -f '[i]pykernel_launcher';"
                       " while pgrep -f '[k]ernel_server' >/dev/null; do sleep 0.05; done", user="root")  # fmt: skip
        execution = s.run_code("'back'")
        assert execution.text == "'back'", execution


def test_sandbox_code_cannot_reach_the_kernel_server(ci: Sandbox) -> None:
    probe = "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('/run/corral/kernels.sock')\nexcept OSError as e:\n    print(type(e).__name__)"
    assert ci.run_code(probe).logs.stdout == ["PermissionError\n"]
    assert ci.commands.run("id -u").stdout.strip() == "1000"

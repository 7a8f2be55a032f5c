"""Templates built from Dockerfiles by a real server: every instruction, the layer cache,
.dockerignore, a start command with a ready check, bad input, deletion and concurrent builds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from corral import (
    BuildContextError,
    BuildFailedError,
    DockerfileError,
    Sandbox,
    SandboxFailedError,
    Template,
    TemplateInUseError,
    TemplateNotFoundError,
    UnsupportedInstructionError,
)
from helpers import REPO, TEMPLATES_DIR, ServerProcess, wait_until

pytestmark = pytest.mark.privileged


@pytest.fixture()
def name(api: dict[str, str]) -> Iterator[str]:
    """A fresh template name, deleted after the test."""
    value = f"t-{secrets.token_hex(4)}"
    yield value
    for t in Template.list(**api):
        if t.name == value:
            Template.delete(t.ref, **api)


def write(ctx: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    return ctx


DOCKERFILE = """\
ARG BASE=base
FROM ${BASE}
ARG GREETING=hello
ENV APP_HOME=/srv/app MODE=test
LABEL org.example.team="sandbox people"
WORKDIR $APP_HOME
COPY app.py ./
COPY --chown=user:user data/ data/
ADD extra.txt /opt/extra/
RUN echo "$GREETING from $MODE" > made.txt && id -un > made-by.txt
RUN ["/bin/sh", "-c", "echo exec form > exec.txt"]
USER 1000
RUN whoami > /home/user/whoami.txt && rm /srv/app/data/drop.txt 2>/dev/null; true
EXPOSE 8000
CMD ["python3", "app.py"]
"""


def test_every_instruction(api: dict[str, str], name: str, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": DOCKERFILE, "app.py": "import os; open('/tmp/started', 'w').write(os.getcwd())\n", "data/keep.txt": "keep\n", "data/drop.txt": "drop\n",
        "data/secret.log": "nope\n", "extra.txt": "extra\n", ".dockerignore": "**/*.log\n",
    })  # fmt: skip
    events: list[dict] = []
    result = Template.build(name=name, context_dir=ctx, build_args={"GREETING": "hi"}, on_event=events.append, **api)
    assert events[0]["type"] == "start" and events[-1]["status"] == "succeeded"
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 15))
    cfg = result.template.config
    assert cfg["env"] == {"APP_HOME": "/srv/app", "MODE": "test"} and cfg["workdir"] == "/srv/app"
    assert cfg["user"] == "user" and cfg["start_cmd"] == "python3 app.py" and cfg["expose"] == ["8000"]
    assert cfg["labels"] == {"org.example.team": "sandbox people"}
    with Sandbox.create(template=name, **api) as sbx:
        r = sbx.commands.run(
            "pwd; cat made.txt made-by.txt exec.txt /opt/extra/extra.txt /home/user/whoami.txt; echo $APP_HOME;"
            " stat -c '%U %n' data data/keep.txt app.py; ls data"
        )
        lines = r.stdout.splitlines()
        assert lines[:7] == ["/srv/app", "hi from test", "root", "exec form", "extra", "user", "/srv/app"]
        assert lines[7:10] == ["user data", "user data/keep.txt", "root app.py"]
        # .dockerignore kept the log out; the last RUN removed drop.txt (a whiteout in its layer hides it)
        assert lines[10:] == ["keep.txt"]
        # the start command (CMD) ran at start, in the background, in the workdir
        wait_until(lambda: sbx.commands.run("cat /tmp/started || true").stdout == "/srv/app", what="start command")


def test_cache_unchanged_rebuild_and_change_at_step_k(api: dict[str, str], name: str, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": f"FROM base\nRUN echo one > /one.txt # {name}\nCOPY f.txt /f.txt\nRUN echo three > /three.txt\n",
        "f.txt": "v1\n",
    })  # fmt: skip
    first = Template.build(name=name, context_dir=ctx, **api)
    assert first.cached_steps == [1]  # FROM a template is always at hand
    started = time.perf_counter()
    again = Template.build(name=name, context_dir=ctx, **api)
    assert time.perf_counter() - started < 1.0
    assert again.cached_steps == [1, 2, 3, 4]
    (ctx / "f.txt").write_text("v2\n")  # step 3 reads it: steps 3 and 4 run again, 1 and 2 do not
    changed = Template.build(name=name, context_dir=ctx, **api)
    assert changed.cached_steps == [1, 2]
    with Sandbox.create(template=name, **api) as sbx:
        assert sbx.commands.run("cat /one.txt /f.txt /three.txt").stdout == "one\nv2\nthree\n"
    nocache = Template.build(name=name, context_dir=ctx, no_cache=True, **api)
    assert nocache.cached_steps == [1]  # only FROM, a template at hand


def test_python_builder_with_start_and_ready_check(api: dict[str, str], name: str, tmp_path: Path) -> None:
    site = write(tmp_path / "site", {"index.html": "hello from the template\n"})
    tpl = (
        Template()
        .from_template("base")
        .copy(site, "/srv/www")
        .run("echo built > /srv/www/built.txt")
        .set_envs({"GREETING": "hey there"})
        .set_workdir("/srv/www")
        .set_start_cmd("python3 -m http.server 8000", ready_cmd="curl -sf http://127.0.0.1:8000/built.txt")
    )
    result = Template.build(tpl, name=name, tag="v1", **api)
    assert result.template.ref == f"{name}:v1" and result.template.config["ready_cmd"]
    with Sandbox.create(template=f"{name}:v1", **api) as sbx:
        # create returned after the ready check passed: the server answers at once
        r = sbx.commands.run("curl -s http://127.0.0.1:8000/index.html; echo $GREETING; pwd")
        assert r.stdout == "hello from the template\nhey there\n/srv/www\n"
    with pytest.raises(TemplateNotFoundError):
        Sandbox.create(template=f"{name}:v2", **api)


def test_bad_input_is_refused_before_a_build(api: dict[str, str], corral_server: ServerProcess, tmp_path: Path) -> None:
    n = f"t-{secrets.token_hex(4)}"
    (tmp_path / "a.txt").write_text("a")
    cases = [
        ("FROM base\nRUN true\nFROBNICATE x\n", UnsupportedInstructionError, "FROBNICATE"),
        ("FROM base\nENV\n", DockerfileError, "line 2"),
        ("FROM base\nCOPY ../../etc/passwd /x\n", BuildContextError, "outside the build context"),
        ("FROM base\nCOPY missing.txt /x\n", BuildContextError, "missing.txt"),
    ]
    for text, error, words in cases:
        (tmp_path / "Dockerfile").write_text(text)
        with pytest.raises(error, match=words):
            Template.build(name=n, context_dir=tmp_path, **api)
    # over plain HTTP: a 4xx {code, message} before any step runs
    with corral_server.client() as http:
        r = http.post("/v1/templates", params={"name": n}, content=b"not a tar")
        assert r.status_code == 400 and r.json()["code"] == "build_context_invalid"
        r = http.post("/v1/templates", params={"name": "Bad Name!"}, content=b"")
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
        r = http.post("/v1/templates", params={"name": "base"}, content=b"")
        assert r.status_code == 400
    assert all(t.name != n for t in Template.list(**api))


def test_failing_run_registers_nothing_and_keeps_its_log(api: dict[str, str], name: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN echo before\nRUN echo doomed >&2; exit 3\nRUN echo never\n")
    events: list[dict] = []
    with pytest.raises(BuildFailedError, match="exit code 3") as e:
        Template.build(name=name, context_dir=tmp_path, on_event=events.append, **api)
    assert "doomed" in e.value.message and e.value.details["step"] == 3
    assert all(t.name != name for t in Template.list(**api))
    build_id = events[0]["build_id"]
    info = Template.get_build(build_id, **api)
    assert info.status == "failed" and info.error and info.error["code"] == "build_failed"
    logged = Template.build_logs(build_id, **api)
    assert logged == events and {"type": "log", "step": 3, "data": "doomed"} in logged


def test_delete_is_refused_while_a_sandbox_uses_the_template(api: dict[str, str], name: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM base\nRUN echo {name} > /x\n")
    built = Template.build(name=name, context_dir=tmp_path, **api)
    layer_path = next(e for e in built.events if e["type"] == "end")["template"]["layers"][0]
    assert Template.get(name, **api).kind == "dockerfile"
    sbx = Sandbox.create(template=name, **api)
    try:
        with pytest.raises(TemplateInUseError):
            Template.delete(name, **api)
    finally:
        sbx.kill()
        sbx.close()
    Template.delete(f"{name}:latest", **api)  # the warm pool is likely filling for it right now
    with pytest.raises(TemplateNotFoundError):
        Template.get(name, **api)
    # no sandbox (pooled ones included) is left on its layers, and the layers went with it
    layers_dir = str(TEMPLATES_DIR / "layers")
    wait_until(lambda: not [m for m in Path("/proc/mounts").read_text().splitlines() if layers_dir in m and layer_path in m],
               timeout=30, what="pooled sandboxes of the deleted template freed")  # fmt: skip


def test_from_a_dockerfile_template_and_concurrent_builds(api: dict[str, str], name: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nENV LEVEL=parent\nRUN echo parent > /parent.txt\n")
    Template.build(name=name, context_dir=tmp_path, **api)
    children = []
    for i in range(2):
        d = write(tmp_path / f"c{i}", {"Dockerfile": f"FROM {name}\nRUN echo child{i} > /child.txt && echo $LEVEL >> /child.txt\n"})
        children.append((f"{name}-c{i}", d))
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda c: Template.build(name=c[0], context_dir=c[1], **api), children))
        assert [r.template.name for r in results] == [c[0] for c in children]
        for i, (child, _) in enumerate(children):
            with Sandbox.create(template=child, **api) as sbx:
                assert sbx.commands.run("cat /parent.txt /child.txt").stdout == f"parent\nchild{i}\nparent\n"
    finally:
        for child, _ in children:
            for t in Template.list(**api):
                if t.name == child:
                    Template.delete(t.ref, **api)


def test_cli_build_prints_steps_and_cached(api: dict[str, str], name: str, tmp_path: Path, corral_env: ServerProcess) -> None:
    write(tmp_path, {"Dockerfile.dev": "FROM base\nRUN echo from-cli > /cli.txt\n"})
    argv = [sys.executable, "-m", "corral.cli.main", "template", "build", "-f", str(tmp_path / "Dockerfile.dev"),
            "--name", name, str(tmp_path)]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "Step 2/2 : RUN echo from-cli > /cli.txt" in first.stdout
    second = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert second.stdout.count("---> CACHED") == 2
    listed = subprocess.run([sys.executable, "-m", "corral.cli.main", "template", "list"], capture_output=True,
                            text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert name in listed.stdout and "base" in listed.stdout
    bad = subprocess.run([*argv[:-1], "--build-arg", "X=1", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "dockerfile_invalid" in bad.stderr
    cli = [sys.executable, "-m", "corral.cli.main", "template"]
    got = subprocess.run([*cli, "get", name], capture_output=True, text=True, cwd=REPO, timeout=60)
    build_id = json.loads(got.stdout)["build_id"]
    logs = subprocess.run([*cli, "logs", build_id], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "Step 2/2 : RUN echo from-cli > /cli.txt" in logs.stdout and "CACHED" in logs.stdout
    assert subprocess.run([*cli, "delete", name], cwd=REPO, timeout=60).returncode == 0


def test_async_sdk_builds_too(api: dict[str, str], name: str, tmp_path: Path) -> None:
    from corral import AsyncSandbox, AsyncTemplate

    async def main() -> str:
        tpl = AsyncTemplate().from_template("base").run(f"echo async {name} > /async.txt")
        result = await AsyncTemplate.build(tpl, name=name, **api)
        assert (await AsyncTemplate.get(result.template.ref, **api)).build_id == result.build_id
        async with await AsyncSandbox.create(template=name, **api) as sbx:
            return (await sbx.commands.run("cat /async.txt")).stdout

    assert asyncio.run(main()) == f"async {name}\n"


def test_openapi_lists_the_template_routes(corral_server: ServerProcess) -> None:
    paths = httpx.get(corral_server.url + "/openapi.json").json()["paths"]
    assert {"/v1/templates", "/v1/templates/{ref}", "/v1/builds/{build_id}", "/v1/builds/{build_id}/logs"} <= set(paths)


def test_a_start_command_that_never_gets_ready_fails_the_create(tmp_path: Path) -> None:
    server = ServerProcess(pool_size=0, extra_env={"CORRAL_READY_TIMEOUT": "1"}).start()
    api = {"api_url": server.url, "api_key": server.api_key}
    name = f"t-{secrets.token_hex(4)}"
    try:
        (tmp_path / "Dockerfile").write_text("FROM base\nCMD sleep 600\n")
        Template.build(name=name, context_dir=tmp_path, ready_cmd="echo not yet; false", **api)
        with pytest.raises(SandboxFailedError, match="did not become ready") as e:
            Sandbox.create(template=name, **api)
        assert "not yet" in e.value.message
        assert Sandbox.list(state="running", **api) == []
        # the failed sandbox was freed: nothing of it is left in the run dir
        wait_until(lambda: not [p for p in server.run_dir.iterdir() if p.is_dir()], timeout=30, what="cleanup")
    finally:
        if any(t.name == name for t in Template.list(**api)):
            Template.delete(name, **api)
        server.stop()
        server.remove_dirs()


def test_too_many_layers_is_a_clear_error(api: dict[str, str], name: str, tmp_path: Path) -> None:
    lines = ["FROM base"]
    for i in range(50):
        (tmp_path / f"f{i}").write_text(f"{name} {i}")
        lines.append(f"COPY f{i} /many/")  # each COPY is a layer (done on the host: fast)
    (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
    with pytest.raises(BuildFailedError, match="over the limit of 48") as e:
        Template.build(name=name, context_dir=tmp_path, **api)
    assert e.value.details["step"] == 49


def test_a_server_killed_during_a_build_cleans_up_at_its_next_start(tmp_path: Path) -> None:
    server = ServerProcess(pool_size=0).start()
    api = {"api_url": server.url, "api_key": server.api_key}
    name = f"t-{secrets.token_hex(4)}"
    (tmp_path / "Dockerfile").write_text(f"FROM base\nRUN echo started {name}; sleep 600\n")
    events: list[dict] = []

    def build() -> None:
        with contextlib.suppress(Exception):  # the server dies under it
            Template.build(name=name, context_dir=tmp_path, on_event=events.append, **api)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(build)
        wait_until(lambda: any(e.get("data") == f"started {name}" for e in events), timeout=60, what="the RUN step")
        assert server.proc is not None
        scratch = list((TEMPLATES_DIR / "layers").glob(f".tmp-*-{server.proc.pid}-*"))
        assert scratch  # the RUN step's upper dir, being written
        server.stop(signal.SIGKILL)
    try:
        server.start()
        build_id = events[0]["build_id"]
        info = Template.get_build(build_id, **api)
        assert info.status == "failed" and info.error and "stopped" in info.error["message"]
        # the build sandbox was reaped (it was no one's), its half-made layer removed
        wait_until(lambda: not [p for p in server.run_dir.iterdir() if p.is_dir()], timeout=30, what="reaping")
        assert not [p for p in scratch if p.exists()], "the killed build's scratch layer is still there"
        assert all(t.name != name for t in Template.list(**api))
    finally:
        server.stop()
        server.remove_dirs()


def test_from_code_interpreter_keeps_its_kernels(api: dict[str, str], name: str, tmp_path: Path) -> None:
    if not any(t.name == "code-interpreter" for t in Template.list(**api)):
        pytest.skip("the code-interpreter template is not built here (make template builds it)")
    (tmp_path / "Dockerfile").write_text(
        "FROM code-interpreter\n"
        "RUN d=/usr/local/lib/python3.11/dist-packages && mkdir -p $d && echo 'VALUE = 42' > $d/corral_layer_mod.py\n"
        "ENV FROM_TEMPLATE=yes\n"
    )
    Template.build(name=name, context_dir=tmp_path, **api)
    with Sandbox.create(template=name, **api) as sbx:  # the kernel sees the layer's files and the ENV
        assert sbx.run_code("import corral_layer_mod\ncorral_layer_mod.VALUE * 2").text == "84"
        assert sbx.run_code("import os\nos.environ['FROM_TEMPLATE']").text == "'yes'"


@pytest.mark.network
def test_builder_installs_debian_and_pypi_packages(api: dict[str, str], name: str) -> None:
    tpl = Template().from_template("base").apt_install(["jq"]).pip_install(["six==1.16.0"])
    assert "apt-get install" in tpl.to_dockerfile() and "pip install --no-cache-dir six==1.16.0" in tpl.to_dockerfile()
    Template.build(tpl, name=name, **api)
    with Sandbox.create(template=name, **api) as sbx:
        r = sbx.commands.run("echo '{\"a\": 7}' | jq .a; python3 -c 'import six; print(six.__version__)'")
        assert r.stdout.split() == ["7", "1.16.0"]

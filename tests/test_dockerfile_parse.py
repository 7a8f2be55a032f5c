"""Dockerfile parsing, variable expansion, .dockerignore and build-context checks (no sandbox)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from corral.dockerignore import DockerIgnore
from corral.errors import BuildContextError, DockerfileError, UnsupportedInstructionError
from corral.manager.plan import plan
from corral.templates import context as ctx
from corral.templates.dockerfile import key_values, parse, substitute
from corral.templates.store import TemplateStore


def test_parse_instructions_continuations_and_comments() -> None:
    text = 'FROM base\n# a comment\nRUN echo a \\\n    && echo b\nCOPY --chown=user:user ["a b", "/x/"]\nCMD ["python3", "-m", "http.server"]\n'
    insts = parse(text)
    assert [i.keyword for i in insts] == ["FROM", "RUN", "COPY", "CMD"]
    assert insts[1].args == "echo a && echo b" and insts[1].line == 3
    assert insts[2].flags == {"chown": "user:user"}
    assert insts[3].exec_form() == ["python3", "-m", "http.server"]
    assert insts[1].exec_form() is None


def test_errors_name_the_line_and_the_instruction() -> None:
    with pytest.raises(DockerfileError) as e:
        parse("FROM base\nRUN\n")
    assert e.value.details["line"] == 2 and "line 2" in e.value.message
    with pytest.raises(UnsupportedInstructionError) as u:
        parse("FROM base\nRUN true\nHEALTHCHECK CMD true\n")
    assert u.value.details == {"instruction": "HEALTHCHECK", "line": 3} and "HEALTHCHECK" in u.value.message
    with pytest.raises(DockerfileError):
        parse("RUN true\n")  # no FROM
    with pytest.raises(UnsupportedInstructionError):
        parse("FROM base\nCOPY --from=builder /a /b\n")
    with pytest.raises(UnsupportedInstructionError):
        parse("FROM base\nFROM base\n")  # multi-stage
    with pytest.raises(DockerfileError):
        parse("FROM base\nRUN echo \\")


def test_substitution_and_key_values() -> None:
    values = {"A": "1", "EMPTY": ""}
    assert substitute("$A ${A} ${B:-dflt} ${A:+alt} ${EMPTY:-x} \\$A", values) == "1 1 dflt alt x $A"
    inst = parse('FROM base\nENV X=1 Y="two words" Z=$X\n')[1]
    assert key_values(inst, {}) == {"X": "1", "Y": "two words", "Z": "1"}
    assert key_values(parse("FROM base\nENV LEGACY some value\n")[1], {}) == {"LEGACY": "some value"}


def test_dockerignore_rules() -> None:
    ig = DockerIgnore("# comment\n*.log\n!keep.log\nbuild/\n**/secret*\n/node_modules\n")
    assert ig.ignored("a.log") and not ig.ignored("keep.log") and not ig.ignored("dir/a.log")
    assert ig.ignored("build/x/y.txt") and ig.ignored("deep/down/secret.txt") and ig.ignored("secret")
    assert ig.ignored("node_modules/pkg/index.js") and not ig.ignored("src/main.py")


def _tar(members: list[tuple[str, bytes | None, str | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_context_refuses_paths_outside_it(tmp_path: Path) -> None:
    for bad in (
        [("../evil", b"x", None)],
        [("/etc/evil", b"x", None)],
        [("link", None, "/etc"), ("link/passwd", b"x", None)],  # through a symlink member
    ):
        dest = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        dest.mkdir()
        with pytest.raises(BuildContextError):
            ctx.unpack(_tar(bad), dest)
    assert not Path("/etc/evil").exists()


def test_plan_checks_copy_sources_and_args(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print(1)")
    (tmp_path / "x.log").write_text("log")
    (tmp_path / ".dockerignore").write_text("*.log\n")
    store = TemplateStore(tmp_path / "templates")
    with pytest.raises(BuildContextError, match="outside the build context"):
        plan(store, "FROM ghcr.example/img\nCOPY ../etc/passwd /x\n", tmp_path, {})
    with pytest.raises(BuildContextError, match="not in the build context"):
        plan(store, "FROM ghcr.example/img\nCOPY x.log /x\n", tmp_path, {})  # ignored by .dockerignore
    with pytest.raises(DockerfileError, match="not declared"):
        plan(store, "FROM ghcr.example/img\n", tmp_path, {"NOPE": "1"})
    steps, config = plan(
        store, "ARG V=1\nFROM ghcr.example/img:$V\nARG W\nENV E=$W\nWORKDIR /app\nCOPY *.py ./\nCMD python3 app.py\n",
        tmp_path, {"W": "w"},
    )  # fmt: skip
    assert steps[0].image == "ghcr.example/img:1"
    assert steps[-2].sources == ["app.py"] and steps[-2].dest == "/app/"
    assert config.env == {"E": "w"} and config.workdir == "/app" and config.start_cmd == "python3 app.py"
    # a changed file changes the COPY step's key and every key after it, not the ones before
    (tmp_path / "app.py").write_text("print(2)")
    steps2, _ = plan(store, "ARG V=1\nFROM ghcr.example/img:$V\nARG W\nENV E=$W\nWORKDIR /app\nCOPY *.py ./\nCMD python3 app.py\n",
                     tmp_path, {"W": "w"})  # fmt: skip
    assert [s.key for s in steps[:4]] == [s.key for s in steps2[:4]]
    assert steps[4].key != steps2[4].key and steps[5].key != steps2[5].key


def test_scratch_dirs_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import os

    store = TemplateStore(tmp_path)
    dead, alive = tmp_path / "layers/.tmp-k-999999999-1", tmp_path / f"layers/.tmp-k-{os.getpid()}-1"
    for d in (dead, alive, tmp_path / "contexts/ctx-999999999-abc"):
        d.mkdir(parents=True)
    assert sorted(store.remove_abandoned()) == [".tmp-k-999999999-1", "ctx-999999999-abc"]
    assert alive.is_dir() and not dead.exists()


def test_image_preparation_never_follows_symlinks_out_of_the_image(tmp_path: Path) -> None:
    from corral.templates.oci import prepare_rootfs

    rootfs, victim = tmp_path / "rootfs", Path(tempfile.mkdtemp(prefix="corral-victim-", dir="/var/tmp"))
    (victim / "passwd").write_text("host's own\n")
    for rel in ("bin/bash", "usr/local/bin/python3"):
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text("")
    (rootfs / "etc").symlink_to(victim)  # absolute: means <rootfs><victim> inside the image
    (rootfs / "tmp").symlink_to("/etc")
    os.chmod(victim, 0o755)
    try:
        prepare_rootfs(rootfs, "hostile")
        assert (victim / "passwd").read_text() == "host's own\n" and victim.stat().st_mode & 0o7777 == 0o755
    finally:
        shutil.rmtree(victim)
    inside = rootfs / str(victim).lstrip("/")
    assert "user:x:1000:1000" in (inside / "passwd").read_text()
    assert os.readlink(rootfs / "usr/bin/python3") == "/usr/local/bin/python3"


def test_copy_into_an_image_resolves_symlinks_inside_it(tmp_path: Path) -> None:
    from corral.templates import fsops

    lower, victim, context = tmp_path / "lower", tmp_path / "victim", tmp_path / "ctx"
    for d in (lower, victim, context):
        d.mkdir()
    (lower / "app").symlink_to(victim)  # a hostile image: /app -> an absolute host path
    (context / "f.txt").write_text("data")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "empty").mkdir()
    with fsops.merged([lower, tmp_path / "empty"], scratch) as root:
        fsops.copy_in(root, context, [["f.txt"]], ["f.txt"], "/app/", 1000, 1000, None)
    assert list(victim.iterdir()) == []
    written = scratch / "diff" / str(victim).lstrip("/") / "f.txt"
    assert written.read_text() == "data" and written.stat().st_uid == 101000


def test_export_to_an_ext4_image_merges_layers_and_unshifts_owners(tmp_path: Path) -> None:
    import subprocess

    from corral.templates.export import export_image
    from corral.templates.store import Resolved

    bottom, top = tmp_path / "bottom", tmp_path / "top"
    for d in (bottom, top):
        d.mkdir()
        os.chown(d, 100000, 100000)
    (bottom / "gone.txt").write_text("hidden by a whiteout")
    (bottom / "kept.txt").write_text("kept")
    os.mknod(top / "gone.txt", 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout
    (top / "new.txt").write_text("new")
    os.chown(top / "new.txt", 101000, 101000)
    res = Resolved(name="x", tag="latest", template_dir=bottom, layers=(top,), key="exporttest")
    image = export_image(TemplateStore(tmp_path / "templates"), res, headroom_mb=8)
    listing = subprocess.run(["debugfs", "-R", "ls -l /", str(image)], capture_output=True, text=True).stdout
    assert "kept.txt" in listing and "new.txt" in listing and "gone.txt" not in listing
    stat = subprocess.run(["debugfs", "-R", "stat /new.txt", str(image)], capture_output=True, text=True).stdout
    assert "User:  1000   Group:  1000" in stat
    assert export_image(TemplateStore(tmp_path / "templates"), res) == image  # cached


def test_builds_of_a_dead_server_are_marked_failed(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    store.save_build({"build_id": "dead1", "status": "building", "pid": 999999999, "name": "x", "tag": "latest"})
    store.save_build({"build_id": "live1", "status": "building", "pid": os.getpid(), "name": "x", "tag": "latest"})
    assert store.fail_abandoned_builds() == ["dead1"]
    assert store.build("dead1")["status"] == "failed" and store.build("live1")["status"] == "building"


def test_start_command_from_entrypoint_cmd_and_labels(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "templates")
    text = 'FROM ghcr.example/img\nENTRYPOINT ["python3", "-m"]\nCMD ["http.server", "8000"]\nLABEL corral.ready_cmd="curl -sf localhost:8000"\n'
    _, config = plan(store, text, tmp_path, {})
    assert config.start_cmd == "python3 -m http.server 8000" and config.ready_cmd == "curl -sf localhost:8000"
    _, config = plan(store, text, tmp_path, {}, start_cmd="sleep 1", ready_cmd="")
    assert config.start_cmd == "sleep 1" and config.ready_cmd is None
    _, config = plan(store, "FROM ghcr.example/img\nCMD echo shell form $HOME\n", tmp_path, {})
    assert config.start_cmd == "echo shell form $HOME"
    with pytest.raises(BuildContextError, match="needs a start command"):
        plan(store, "FROM ghcr.example/img\n", tmp_path, {}, ready_cmd="true")


def test_from_a_recipe_template_that_is_not_built_says_so(tmp_path: Path) -> None:
    from corral.errors import TemplateNotFoundError
    from corral.templates.recipes import RECIPES

    store = TemplateStore(tmp_path / "templates")  # an empty templates dir: base is not built there
    assert "base" in RECIPES
    with pytest.raises(TemplateNotFoundError, match="ensure base"):
        plan(store, "FROM base\n", tmp_path, {})


def test_garbage_collection_waits_for_no_build_of_any_server(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    orphan = tmp_path / "layers" / "abc" / "diff"
    orphan.mkdir(parents=True)
    (orphan.parent / "meta.json").write_text('{"empty": false}')
    with store.building():  # a build runs: its layers may not be registered yet
        assert store.collect_garbage() == [] and orphan.is_dir()
    trash = store.collect_garbage()
    assert len(trash) == 1 and not orphan.exists() and (trash[0] / "diff").is_dir()


def test_the_isolation_label_names_a_backend(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "templates")
    _, config = plan(store, "FROM ghcr.example/img\nLABEL corral.isolation=gvisor\n", tmp_path, {})
    assert config.labels["corral.isolation"] == "gvisor"
    with pytest.raises(DockerfileError, match=r"line 3: corral\.isolation is one of"):
        plan(store, "FROM ghcr.example/img\n\nLABEL corral.isolation=docker\n", tmp_path, {})

"""Templates FROM OCI images: a local docker-registry on loopback, an image the test builds from
an mmdebstrap root filesystem and pushes with umoci + skopeo, pulled by the server's builder."""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import BuildFailedError, ImageNotFoundError, RegistryError, Sandbox, Template
from helpers import ServerProcess, free_port
from registry import Registry, mini_rootfs_tar

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    reg = Registry().start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def mini_image(registry: Registry) -> str:
    # a unique repository per run: the server's pull cache is keyed by reference
    return registry.push_rootfs(
        mini_rootfs_tar(), f"test/mini-{secrets.token_hex(3)}", "1",
        config=["--config.env=FROM_IMAGE=inherited", "--config.workingdir=/opt", "--config.cmd=/bin/false"],
    )  # fmt: skip


@pytest.fixture()
def names(api: dict[str, str]) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for t in Template.list(**api):
        if t.name in made:
            Template.delete(t.ref, **api)


def test_build_from_a_pulled_image(api: dict[str, str], mini_image: str, names: list[str], tmp_path: Path) -> None:
    name = f"oci-{secrets.token_hex(3)}"
    names.append(name)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {mini_image}\nRUN python3 -c 'print(6 * 7)' > /answer.txt && echo $FROM_IMAGE > inherited.txt\n"
        "COPY hello.txt /home/user/\n"
    )
    (tmp_path / "hello.txt").write_text("hello\n")
    events: list[dict] = []
    first = Template.build(name=name, context_dir=tmp_path, on_event=events.append, **api)
    assert 1 not in first.cached_steps and any("pulling" in e.get("data", "") for e in events)
    with Sandbox.create(template=name, **api) as sbx:
        r = sbx.commands.run("cat /answer.txt ~/hello.txt; id -un; id -u; . /etc/os-release; echo $ID")
        assert r.stdout.split() == ["42", "hello", "user", "1000", "debian"]
        assert sbx.commands.run("stat -c %U /answer.txt", user="root").stdout.strip() == "root"
        # the image's ENV and WORKDIR are inherited (its CMD is not: no start command)
        r = sbx.commands.run("pwd; cat inherited.txt; echo $FROM_IMAGE")
        assert r.stdout.split() == ["/opt", "inherited", "inherited"]
    assert first.template.config["start_cmd"] is None
    # rebuilt unchanged: the image is not pulled again, every step is CACHED
    started = time.perf_counter()
    again = Template.build(name=name, context_dir=tmp_path, **api)
    assert time.perf_counter() - started < 1.0 and again.cached_steps == [1, 2, 3]


def test_bad_images_say_what_is_wrong(api: dict[str, str], registry: Registry, tmp_path: Path) -> None:
    name = f"oci-{secrets.token_hex(3)}"
    no_bash = registry.push_rootfs(None, "test/no-bash", "1", {"hello.txt": "hi"})
    closed = f"127.0.0.1:{free_port()}/test/img:1"
    for ref, error, words in (
        (f"{registry.host}/test/missing:1", ImageNotFoundError, "not found"),
        (closed, RegistryError, "cannot reach the registry"),
        (no_bash, BuildFailedError, "/bin/bash"),
    ):
        (tmp_path / "Dockerfile").write_text(f"FROM {ref}\nRUN true\n")
        with pytest.raises(error, match=words):
            Template.build(name=name, context_dir=tmp_path, **api)
    assert all(t.name != name for t in Template.list(**api))


def test_a_missing_image_is_a_404_before_the_build(corral_server: ServerProcess, registry: Registry) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = f"FROM {registry.host}/test/missing:1\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with corral_server.client() as http:
        r = http.post("/v1/templates", params={"name": "never"}, content=context.getvalue())
        assert r.status_code == 404 and r.json()["code"] == "image_not_found"
        assert "test/missing:1" in r.json()["message"]


def test_a_moved_tag_is_pulled_again_with_no_cache(api: dict[str, str], registry: Registry, names: list[str], tmp_path: Path) -> None:
    repo, name = f"test/moving-{secrets.token_hex(3)}", f"oci-{secrets.token_hex(3)}"
    names.append(name)
    ref = registry.push_rootfs(mini_rootfs_tar(), repo, "1", {"etc/version": "one\n"})
    (tmp_path / "Dockerfile").write_text(f"FROM {ref}\nRUN cp /etc/version /copied\n")
    Template.build(name=name, context_dir=tmp_path, **api)
    registry.push_rootfs(mini_rootfs_tar(), repo, "1", {"etc/version": "two\n"})
    assert Template.build(name=name, context_dir=tmp_path, **api).cached_steps == [1, 2]  # pinned, as docker build
    assert Template.build(name=name, context_dir=tmp_path, no_cache=True, **api).cached_steps == []
    # the steps after FROM are keyed on the image pulled: a later rebuild stacks on the new image only
    assert Template.build(name=name, context_dir=tmp_path, **api).cached_steps == [1, 2]
    with Sandbox.create(template=name, **api) as sbx:
        assert sbx.commands.run("cat /etc/version /copied").stdout == "two\ntwo\n"

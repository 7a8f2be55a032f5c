"""GET /v1/backends and the choice of a backend per sandbox (not parametrized: about all of them)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from corral import Sandbox, Template
from helpers import ServerProcess

from .conftest import BACKENDS


def test_every_backend_is_listed_with_whether_it_works_here(
    backend_infos: dict[str, dict[str, Any]], conn: dict[str, str]
) -> None:
    assert set(backend_infos) == set(BACKENDS)
    assert backend_infos["namespace"]["works"] is True  # this suite's server runs on it
    for info in backend_infos.values():
        assert info["works"] or info["reason"], info  # a backend that does not work says why
        assert not info["auto"] or info["works"]
    defaults = [name for name, info in backend_infos.items() if info["default"]]
    assert defaults == ["namespace"]  # the tests' server runs with --isolation namespace
    listed = Sandbox.backends(**conn)
    assert {b.name: b.works for b in listed} == {n: i["works"] for n, i in backend_infos.items()}


def test_auto_is_the_strongest_backend_fit_for_production(
    backend_infos: dict[str, dict[str, Any]], conn: dict[str, str]
) -> None:
    strongest = next(name for name in ("microvm", "gvisor", "namespace") if backend_infos[name]["auto"])
    with Sandbox.create(isolation="auto", **conn) as sbx:
        assert sbx.get_info().isolation == strongest


def test_an_unknown_or_unusable_backend_is_refused(
    backend_infos: dict[str, dict[str, Any]], corral_server: ServerProcess
) -> None:
    with corral_server.client() as http:
        bad = http.post("/v1/sandboxes", json={"isolation": "docker"})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_request", bad.text
        for name, info in backend_infos.items():
            if not info["works"]:
                r = http.post("/v1/sandboxes", json={"isolation": name})
                assert r.status_code == 400 and r.json()["code"] == "not_supported", r.text
                assert info["reason"] in r.json()["message"]


def test_a_templates_label_picks_its_default_backend(
    backend_infos: dict[str, dict[str, Any]], conn: dict[str, str], tmp_path: Path
) -> None:
    # Another backend than the server's default when this host has one, so the label is what decides.
    wanted = next((n for n, i in backend_infos.items() if i["works"] and not i["default"]), "namespace")
    (tmp_path / "Dockerfile").write_text(f"FROM base\nLABEL corral.isolation={wanted}\n")
    name = f"conformance-label-{secrets.token_hex(3)}"
    Template.build(name=name, context_dir=str(tmp_path), **conn)
    try:
        with Sandbox.create(template=name, **conn) as sbx:
            assert sbx.get_info().isolation == wanted
        with Sandbox.create(template=name, isolation="namespace", **conn) as sbx:  # the request wins
            assert sbx.get_info().isolation == "namespace"
    finally:
        Template.delete(name, **conn)

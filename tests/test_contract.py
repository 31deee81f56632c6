"""The HTTP contract as a whole: what the OpenAPI document says is what the server does,
for every operation alike (not one endpoint at a time)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth


def _fill(template: str) -> str:
    """A concrete path for a template: ``{name}`` → a model that exists, numbers → 1."""
    return template.replace("{name}", "m").replace("{version}", "1").replace("{job_id}", "1")


# --------------------------------------------------------------------------- page size
@pytest.mark.parametrize("most", [None, 7, 1000])
def test_documented_page_limit_is_the_enforced_one(make_settings, most: int | None) -> None:
    """Every list operation's ``limit`` says ``maximum`` = the app's ``page_limit_max``
    (default or not), and the server accepts exactly up to it."""
    settings = make_settings() if most is None else make_settings(page_limit_max=most)
    bound = settings.page_limit_max
    with TestClient(create_app(settings), headers=auth()) as c:
        create_model(c, "m")
        spec: dict[str, Any] = c.get("/openapi.json").json()
        lists = [
            (path, param)
            for path, ops in spec["paths"].items()
            for method, op in ops.items()
            for param in op.get("parameters", [])
            if method == "get" and param["name"] == "limit"
        ]
        assert {p for p, _ in lists} >= {"/v1/models", "/v1/models/{name}/versions", "/v1/jobs", "/v1/keys"}
        for path, param in lists:
            sch = param["schema"]
            assert sch["maximum"] == bound and sch["minimum"] == 1, (path, sch)
            assert sch["default"] == min(50, bound) and str(bound) in param["description"]
            url = _fill(path)
            assert c.get(url, params={"limit": bound}).status_code == 200, path
            assert c.get(url).status_code == 200, path  # the documented default is accepted too
            assert_problem(c.get(url, params={"limit": bound + 1}), 422, ["query", "limit"])
            assert_problem(c.get(url, params={"limit": 0}), 422, ["query", "limit"])


# --------------------------------------------------------------------------- 405 Allow
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{[^}/]+\}", "[^/]+", template) + "$")


def _allow(r: Any) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


def test_405_allow_lists_every_method_of_the_path(anon) -> None:
    """For every path of the document: each method it lacks answers 405 whose ``Allow``
    is exactly the set of methods that path does not answer 405 to: the methods of every
    template matching it, plus HEAD only with GET and only if it is served. No key is
    needed to learn that."""
    spec: dict[str, Any] = anon.get("/openapi.json").json()
    templates = {path: {m.upper() for m in ops} for path, ops in spec["paths"].items()}
    checked = 0
    for template in templates:
        url = re.sub(r"\{[^}/]+\}", "zz1", template)
        documented = set().union(*(ms for t, ms in templates.items() if _regex(t).match(url)))
        answers = {m: anon.request(m, url) for m in METHODS}
        served = {m for m, r in answers.items() if r.status_code != 405}
        assert served - {"HEAD"} == documented, (url, served, documented)
        assert "HEAD" not in served or "GET" in served
        for method, r in answers.items():
            if method in served:
                continue
            assert r.status_code == 405 and _allow(r) == served, (method, url, r.headers.get("allow"), served)
            if method != "HEAD":
                assert_problem(r, 405)
            checked += 1
    assert checked > len(templates)


def test_405_allow_with_get_and_delete(client) -> None:
    """The probe's case: a path with GET and DELETE, asked with POST."""
    create_model(client, "m")
    r = client.post("/v1/models/m")
    body = assert_problem(r, 405)
    assert _allow(r) - {"HEAD"} == {"GET", "DELETE"}
    assert "POST" in body["detail"] and "/v1/models/m" in body["detail"]

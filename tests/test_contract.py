"""The HTTP contract as a whole: what the OpenAPI document says is what the server does,
for every operation alike (not one endpoint at a time)."""

from __future__ import annotations

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

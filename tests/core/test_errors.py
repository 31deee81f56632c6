"""Every 4xx/5xx is application/problem+json — FastAPI's own validation errors, unknown
routes, wrong methods, oversized bodies and unexpected exceptions included."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from tests.api_helpers import assert_problem, create_model, model_spec
from tests.conftest import auth


def test_unknown_route_and_method(client):
    body = assert_problem(client.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in body["detail"]
    body = assert_problem(client.patch("/v1/models"), 405)
    assert "PATCH" in body["detail"]


def test_validation_errors_list_every_offending_place(client):
    r = client.post("/v1/models", json={"name": "UPPER", "task": "x", "input_dim": 0})
    body = assert_problem(r, 422)
    locs = [e["loc"] for e in body["errors"]]
    assert ["body", "name"] in locs and ["body", "task"] in locs and ["body", "input_dim"] in locs
    assert all(isinstance(e["msg"], str) and e["msg"] for e in body["errors"])
    assert body["type"].endswith("/validation")
    assert "more" in body["detail"]


def test_malformed_json_is_400(client):
    r = client.post("/v1/models", content=b'{"name": ', headers={"Content-Type": "application/json"})
    body = assert_problem(r, 400)
    assert "JSON" in body["detail"]


def test_body_over_the_limit_is_413_before_it_is_read(make_settings):
    with TestClient(create_app(make_settings(max_body_bytes=4096)), headers=auth()) as c:
        create_model(c)
        big = {"inputs": [[1.0, 2.0, 3.0]] * 2000}
        assert_problem(c.post("/v1/models/m/predict", json=big), 413)

        def chunks():  # chunked, without Content-Length
            yield b'{"inputs": ['
            for _ in range(1000):
                yield b"[1.0, 2.0, 3.0],"
            yield b"[1.0, 2.0, 3.0]]}"

        r = c.post("/v1/models/m/predict", content=chunks(), headers={"Content-Type": "application/json"})
        assert_problem(r, 413)
        r = c.post("/v1/models", json=model_spec("x", description="d" * 5000))
        assert_problem(r, 413)
        assert_problem(c.get("/v1/models/x"), 404)


def test_unexpected_errors_are_500_problems_without_details(make_settings, caplog):
    app = create_app(make_settings(run_learner=False, run_worker=False))

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c:
        body = assert_problem(c.get("/v1/boom"), 500)
    assert "secret internals" not in body["detail"]
    assert "secret internals" in caplog.text

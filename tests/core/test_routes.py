"""Hot routes (app.core.routes): /predict and /update read their parameters themselves, so
check they refuse what FastAPI's declared parameters refused, in the same order — the key
(401), the path (422), the scope and model restriction (403), then query and headers —
and document the same parameters."""

from __future__ import annotations

import pytest

from tests.api_helpers import assert_problem, create_model

SAMPLE = {"samples": [{"x": [1.0, 2.0, 3.0], "y": 1.0}]}
X = {"inputs": [[1.0, 2.0, 3.0]]}


@pytest.mark.parametrize("path,body", [("predict", X), ("update", SAMPLE)])
def test_the_key_then_the_name_then_the_scope(client, anon, path, body):
    create_model(client)
    assert_problem(anon.post(f"/v1/models/m/{path}", json=body), 401)
    assert_problem(anon.post(f"/v1/models/BAD/{path}", json=body), 401)  # the key first
    assert_problem(client.post(f"/v1/models/BAD/{path}", json=body), 422, ["path", "name"])
    assert_problem(client.post(f"/v1/models/{'a' * 65}/{path}", json=body), 422, ["path", "name"])
    other = client.post("/v1/keys", json={"name": "o", "scope": "admin", "models": ["other"]}).json()["key"]
    h = {"Authorization": f"Bearer {other}"}
    assert_problem(client.post(f"/v1/models/m/{path}", json=body, headers=h), 403)
    assert_problem(client.post(f"/v1/models/BAD/{path}", json=body, headers=h), 422, ["path", "name"])
    reader = client.post("/v1/keys", json={"name": "r", "scope": "read"}).json()["key"]
    r = client.post(f"/v1/models/m/{path}", json=body, headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == (200 if path == "predict" else 403)
    assert client.post(f"/v1/models/m/{path}", json=body, headers={"Authorization": "Basic abc"}).status_code == 401


@pytest.mark.parametrize(
    "query,loc",
    [
        ("wait=maybe", ["query", "wait"]),
        ("timeout=0", ["query", "timeout"]),
        ("timeout=-1", ["query", "timeout"]),
        ("timeout=601", ["query", "timeout"]),
        ("timeout=nan", ["query", "timeout"]),
        ("timeout=abc", ["query", "timeout"]),
    ],
)
def test_update_query_parameters_are_checked(client, query, loc):
    create_model(client)
    assert_problem(client.post(f"/v1/models/m/update?{query}", json=SAMPLE), 422, loc)
    assert client.get("/v1/models/m").json()["online"]["accepted"] == 0


def test_update_reads_its_parameters(client):
    create_model(client)
    for q in ("wait=TRUE&timeout=30", "wait=1", "wait=off", "timeout=0.5", ""):
        assert client.post(f"/v1/models/m/update?{q}", json=SAMPLE).status_code == 202
    r = client.post("/v1/models/m/update", json=SAMPLE, headers={"Idempotency-Key": "k" * 256})
    assert_problem(r, 422, ["header", "Idempotency-Key"])
    r = client.post("/v1/models/m/update", json=SAMPLE, headers={"Idempotency-Key": "k" * 255})
    assert r.status_code == 202 and not r.json()["duplicate"]


def test_the_document_states_the_parameters_and_security(client):
    doc = client.get("/openapi.json").json()
    for path, names in (("predict", ["name"]), ("update", ["name", "wait", "timeout", "Idempotency-Key"])):
        op = doc["paths"][f"/v1/models/{{name}}/{path}"]["post"]
        assert [p["name"] for p in op["parameters"]] == names
        assert op["security"] == [{"HTTPBearer": []}]
        name = op["parameters"][0]
        assert name["in"] == "path" and name["required"] and name["schema"]["maxLength"] == 64


# --------------------------------------------------------------------------- the hot lane
BIG = b"{" + b" " * 5000 + b"}"  # over the 4,096-byte limit these tests set


def _counted(app, template: str, status: int) -> float:  # type: ignore[no-untyped-def]
    return float(app.state.ctx.metrics.requests.labels("POST", template, str(status))._value.get())


def _cases(reader: str, other: str) -> list[tuple[str, str, dict[str, object]]]:
    """(what, path, httpx keyword arguments): a request for each answer a hot route gives."""
    ok_x, ok_s = {"inputs": [[1.0, 2.0, 3.0]]}, SAMPLE
    as_json = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, dict[str, object]]] = []
    for path, body in (("predict", ok_x), ("update", ok_s)):
        p = f"/v1/models/m/{path}"
        cases += [
            ("no key", p, {"json": body, "headers": {"Authorization": ""}}),
            ("bad key", p, {"json": body, "headers": {"Authorization": "Bearer nope"}}),
            ("bad name", f"/v1/models/B%20D/{path}", {"json": body}),
            ("long name", f"/v1/models/{'a' * 65}/{path}", {"json": body}),
            ("other model", p, {"json": body, "headers": {"Authorization": f"Bearer {other}"}}),
            ("no model", f"/v1/models/ghost/{path}", {"json": body}),
            ("declared too large", p, {"content": BIG, "headers": as_json}),
            ("declared too large, no key", p, {"content": BIG, "headers": {**as_json, "Authorization": ""}}),
            ("streamed too large", p, {"content": "stream", "headers": as_json}),
            ("media type", p, {"content": b"x", "headers": {"Content-Type": "text/plain"}}),
            ("malformed", p, {"content": b'{"inputs": [', "headers": as_json}),
            ("invalid", p, {"json": {"inputs": [[1.0]], "samples": [{"x": [1.0], "y": 1.0}]}}),
            ("empty", p, {"content": b"", "headers": as_json}),
        ]
    ndjson = {"Content-Type": "application/x-ndjson"}
    cases += [
        ("predict", "/v1/models/m/predict", {"json": ok_x}),
        ("predict as reader", "/v1/models/m/predict", {"json": ok_x, "headers": {"Authorization": f"Bearer {reader}"}}),
        ("update as reader", "/v1/models/m/update", {"json": ok_s, "headers": {"Authorization": f"Bearer {reader}"}}),
        ("update", "/v1/models/m/update", {"json": ok_s}),
        ("update query", "/v1/models/m/update?timeout=0", {"json": ok_s}),
        ("update key header", "/v1/models/m/update", {"json": ok_s, "headers": {"Idempotency-Key": "a b"}}),
        ("update ndjson", "/v1/models/m/update", {"content": b'{"x": [1, 2, 3], "y": 0.5}\n', "headers": ndjson}),
        ("update bad ndjson", "/v1/models/m/update", {"content": b'{"x": [1, 2]}\n', "headers": ndjson}),
    ]
    return cases


def test_the_hot_lane_answers_what_the_middleware_and_router_answer(make_settings):
    """Each kind of request to /predict and /update, through the lane and through the whole
    stack (an empty lane): the same status, headers and body (an update's offsets aside),
    each counted once under its route template."""
    from fastapi.testclient import TestClient

    from app.core.routes import HotLane
    from app.main import create_app
    from tests.conftest import auth

    app = create_app(make_settings(max_body_bytes=4096))
    with TestClient(app, headers=auth()) as c:
        create_model(c)
        reader = c.post("/v1/keys", json={"name": "r", "scope": "read"}).json()["key"]
        other = c.post("/v1/keys", json={"name": "o", "scope": "admin", "models": ["x"]}).json()["key"]
        lane = app.hot_lane
        assert {(h.method, h.template) for h in lane.paths} == {
            ("POST", "/v1/models/{name}/predict"),
            ("POST", "/v1/models/{name}/update"),
        }
        statuses = set()
        for what, path, kw in _cases(reader, other):
            template = "/v1/models/{name}/" + path.rsplit("/", 1)[1].split("?")[0]
            answers = []
            for via in (lane, HotLane()):
                app.hot_lane = via
                sent = kw
                if kw.get("content") == "stream":  # chunked: no Content-Length
                    sent = {**kw, "content": iter([b'{"samples": [', b" " * 5000, b"]}"])}
                before = [_counted(app, t, 413) for t in (template, "unmatched")]
                r = c.post(path, **sent)  # type: ignore[arg-type]
                if what.startswith("declared too large"):
                    # the middleware refuses it before routing ("unmatched"); the lane
                    # knows the route
                    counted = template if via is lane else "unmatched"
                    assert _counted(app, counted, 413) == before[counted != template] + 1, what
                answers.append((r, _counted(app, template, r.status_code)))
            app.hot_lane = lane
            (a, counted_a), (b, counted_b) = answers
            statuses.add(a.status_code)
            assert a.status_code == b.status_code, (what, a.text, b.text)
            if not what.startswith("declared too large"):
                assert counted_b == counted_a + 1, what
            for h in ("content-type", "allow", "retry-after"):
                assert a.headers.get(h) == b.headers.get(h), (what, h)
            ja, jb = a.json(), b.json()
            if a.status_code == 202:
                ja = {k: v for k, v in ja.items() if "offset" not in k}
                jb = {k: v for k, v in jb.items() if "offset" not in k}
            assert ja == jb, what
        assert statuses == {200, 202, 400, 401, 403, 404, 413, 415, 422}


@pytest.mark.parametrize("status,exc", [(500, RuntimeError("boom")), (507, OSError(28, "No space left on device"))])
def test_the_hot_lane_renders_escaping_errors_as_the_app_does(make_settings, monkeypatch, status, exc):
    """An exception escaping the endpoint: 507 for a full disk, else 500, both ways alike."""
    from fastapi.testclient import TestClient

    from app.core.routes import HotLane
    from app.main import create_app
    from tests.conftest import auth

    app = create_app(make_settings())
    with TestClient(app, headers=auth(), raise_server_exceptions=False) as c:
        create_model(c)

        async def broken(*a, **k):  # type: ignore[no-untyped-def]
            raise exc

        monkeypatch.setattr(app.state.ctx.online, "update", broken)
        lane = app.hot_lane
        bodies = []
        for via in (lane, HotLane()):
            app.hot_lane = via
            bodies.append(assert_problem(c.post("/v1/models/m/update", json=SAMPLE), status))
        assert bodies[0] == bodies[1]


def test_the_hot_lane_leaves_other_requests_to_the_router():
    from app.core.routes import HotLane
    from app.online import router as online

    lane = HotLane()
    lane.add_router(online.router, prefix="/v1")
    base = {"type": "http", "method": "POST", "path": "/v1/models/churn/update"}
    found = lane.match(base)
    assert found is not None
    assert found[0].template == "/v1/models/{name}/update" and found[1] == {"name": "churn"}
    for scope in (
        {**base, "method": "GET"},
        {**base, "path": "/v1/models/churn/update/"},
        {**base, "path": "/v1/models/churn/checkpoint"},
        {**base, "path": "/v1/models/a/b/update"},
        {**base, "root_path": "/steward"},
    ):
        assert lane.match(scope) is None, scope

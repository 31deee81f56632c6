"""The HTTP contract as a whole: what the OpenAPI document says is what the server does,
for every operation alike (not one endpoint at a time)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from pydantic import create_model as pydantic_model

from app.core.schemas import Strict
from app.core.settings import Settings
from app.main import create_app
from tests.api_helpers import assert_problem, create_model
from tests.conftest import auth


def _fill(template: str, webhook: str = "wh_0") -> str:
    """A concrete path for a template: ``{name}`` → a model that exists, ``{alias}`` → its
    alias, ``{webhook_id}`` → ``webhook``, numbers → 1."""
    out = template.replace("{name}", "m").replace("{version}", "1").replace("{job_id}", "1")
    return out.replace("{alias}", "prod").replace("{webhook_id}", webhook)


# --------------------------------------------------------------------------- page size
@pytest.mark.parametrize("most", [None, 7, 1000])
def test_documented_page_limit_is_the_enforced_one(make_settings, most: int | None) -> None:
    """Every list operation's ``limit`` says ``maximum`` = the app's ``page_limit_max``
    (default or not), and the server accepts exactly up to it."""
    settings = make_settings() if most is None else make_settings(page_limit_max=most)
    bound = settings.page_limit_max
    with TestClient(create_app(settings), headers=auth()) as c:
        create_model(c, "m")
        c.put("/v1/models/m/aliases/prod", json={"version": 1})
        webhook = c.post("/v1/webhooks", json={"url": "http://8.8.8.8/h", "events": ["*"]}).json()["id"]
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
            url = _fill(path, webhook)
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
    """The probe's case: a path with GET, DELETE (and PATCH), asked with POST."""
    create_model(client, "m")
    r = client.post("/v1/models/m")
    body = assert_problem(r, 405)
    assert _allow(r) - {"HEAD"} == {"GET", "DELETE", "PATCH"}
    assert "POST" in body["detail"] and "/v1/models/m" in body["detail"]


# --------------------------------------------------------------------------- integers
def _strict_models() -> list[type[Strict]]:
    out, todo = [], list(Strict.__subclasses__())
    while todo:
        m = todo.pop()
        if m not in out:
            out.append(m)
            todo += m.__subclasses__()
    return out


def _integer_schema(sch: Any) -> dict[str, Any] | None:
    """The first ``"type": "integer"`` schema within ``sch`` (items, anyOf …), or None."""
    if isinstance(sch, dict):
        if sch.get("type") == "integer":
            return sch
        for v in sch.values():
            found = _integer_schema(v)
            if found is not None:
                return found
    if isinstance(sch, list):
        for v in sch:
            found = _integer_schema(v)
            if found is not None:
                return found
    return None


def _integer_fields() -> list[tuple[type[Strict], str, dict[str, Any], bool]]:
    """(model, field, its integer schema, is a list) for every integer of every request body."""
    create_app(Settings(data_dir=Path("/nonexistent-steward-openapi-only")))  # imports every router
    out = []
    for model in _strict_models():
        props = model.model_json_schema()["properties"]
        for name, field in model.model_fields.items():
            sch = props[field.alias or name]
            found = _integer_schema({k: v for k, v in sch.items() if k not in ("default", "examples")})
            if found is not None:
                out.append((model, name, found, sch.get("type") == "array"))
    return out


INTEGER_FIELDS = _integer_fields()


def test_every_request_body_is_strict(anon) -> None:
    spec: dict[str, Any] = anon.get("/openapi.json").json()
    names = {m.__name__ for m in _strict_models()}
    refs = [
        c["schema"]["$ref"].rsplit("/", 1)[1]
        for ops in spec["paths"].values()
        for op in ops.values()
        for c in op.get("requestBody", {}).get("content", {}).values()
        if "$ref" in c.get("schema", {})
    ]
    assert refs and set(refs) <= names


def test_integer_fields_are_found() -> None:
    found = {(m.__name__, f) for m, f, _, _ in INTEGER_FIELDS}
    assert {
        ("ModelCreate", "input_dim"),
        ("ModelCreate", "hidden"),
        ("AliasPut", "version"),
        ("MigrateIn", "from_"),
        ("MigrateIn", "hidden_head"),
        ("TrainOptions", "epochs"),
        ("TrainOptions", "batch_size"),
        ("EvalLog", "from_offset"),
        ("GuardSpec", "warmup"),
        ("ResumeIn", "from_version"),
    } <= found


@pytest.mark.parametrize(
    ("model", "name", "sch", "is_list"), INTEGER_FIELDS, ids=[f"{m.__name__}.{f}" for m, f, _, _ in INTEGER_FIELDS]
)
def test_integer_field_takes_integer_valued_floats(model: type[Strict], name: str, sch: Any, is_list: bool) -> None:
    """JSON Schema's integer is a number with no fractional part: for every integer of every
    request body, ``v.0`` is ``v``; ``v.5``, ``true`` and ``"v"`` stay refused (a one-field
    model with the field exactly as declared, on the request bodies' base)."""
    field = model.model_fields[name]
    one = pydantic_model("One", __base__=Strict, f=(field.annotation, field))
    v = int(sch.get("minimum", 1))
    wrap = (lambda x: [x]) if is_list else (lambda x: x)
    key = field.alias or "f"
    got = one.model_validate({key: wrap(float(v))}).f
    assert got == wrap(v) and type(got[0] if is_list else got) is int
    takes_strings = '"string"' in json.dumps(model.model_json_schema()["properties"][key if field.alias else name])
    for bad in (v + 0.5, True, float("inf"), *(() if takes_strings else (str(v),))):
        with pytest.raises(ValidationError):
            one.model_validate({key: wrap(bad)})


def test_integer_valued_floats_over_http(client) -> None:
    r = client.post(
        "/v1/models",
        json={"name": "m", "task": "multiclass", "input_dim": 2.0, "output_dim": 3.0, "hidden": [4.0], "seed": 7.0},
    )
    assert r.status_code == 201, r.text
    assert r.json()["input_dim"] == 2 and r.json()["hidden"] == [4] and r.json()["seed"] == 7
    assert client.put("/v1/models/m/aliases/production", json={"version": 1.0}).status_code in (200, 201)
    r = client.post("/v1/models/m/predict", json={"inputs": [[1, 2]], "version": 1.0})
    assert r.status_code == 200 and r.json()["version"] == 1
    r = client.post("/v1/models/m/evaluate", json={"samples": [{"x": [1, 2], "y": 2.0}], "version": 1e0})
    assert r.status_code == 200, r.text
    assert_problem(client.put("/v1/models/m/aliases/production", json={"version": 1.5}), 422, ["body", "version"])
    assert_problem(client.put("/v1/models/m/aliases/production", json={"version": True}), 422, ["body", "version"])
    assert_problem(client.post("/v1/models/m/evaluate", json={"samples": [{"x": [1, 2], "y": 2.5}]}), 422)
    assert_problem(client.post("/v1/models/m/evaluate", json={"samples": [{"x": [1, 2], "y": True}]}), 422)
    assert client.get("/v1/models/m/versions/1.0").status_code == 200  # a path's "1.0" as well


# --------------------------------------------------------------------------- float32 range
FLT_MAX_PRINTED = "3.4028235e38"  # float32's largest value as printed: rounds to it
ROUNDS_TO_INF = "3.4028236e38"


def _number_bodies(v: str) -> list[tuple[str, str, str, list[Any]]]:
    """(method, url, JSON text, loc of the number) of every entry point that checks numbers."""
    smp = '{"x": [1, V], "y": [V, 1]}'.replace("V", v)
    samples = '{"samples": [S]}'.replace("S", smp)
    return [
        ("POST", "/v1/models/r/update", samples, ["body", "samples", 0, "x"]),
        ("NDJSON", "/v1/models/r/update", smp + "\n", ["body", "samples", 0, "x"]),
        ("POST", "/v1/models/r/evaluate", samples, ["body", "samples", 0, "x"]),
        ("POST", "/v1/models/r/predict", '{"inputs": [[1, V]]}'.replace("V", v), ["body", "inputs", 0, 1]),
        ("POST", "/v1/models/r/batch-update", samples.replace(smp, smp + ", " + smp), ["body", "samples", 0, "x"]),
    ]


def _send(c: TestClient, method: str, url: str, text: str) -> Any:
    ctype = "application/x-ndjson" if method == "NDJSON" else "application/json"
    return c.post(url, content=text.encode(), headers={"Content-Type": ctype})


def test_a_number_in_float32_range_is_one_that_rounds_to_a_finite_float32(client) -> None:
    create_model(client, "r", input_dim=2, output_dim=2, task="regression")
    for method, url, text, _ in _number_bodies(FLT_MAX_PRINTED):
        r = _send(client, method, url, text)
        assert r.status_code < 300, (method, url, r.text)
    for method, url, text, loc in _number_bodies(ROUNDS_TO_INF):
        body = assert_problem(_send(client, method, url, text), 422, loc)
        assert "overflows float32" in body["errors"][0]["msg"], (method, url, body)


# --------------------------------------------------------------------------- JSON bodies
HUGE_INT = "7" * 5000
HUGE_FLOAT = "1" * 5000 + ".5"


def _json_operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), _fill(path).replace("{alias}", "production").replace("{target}", "onnx"))
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    ]


def test_numbers_beyond_every_bound_are_422_not_400(client) -> None:
    """Well-formed JSON with an integer of 5000 digits, a float of 5000 digits or 1e999 is
    a 422 at the value's place, for /update (JSON and NDJSON) and for parsed bodies."""
    create_model(client, "r", input_dim=2, output_dim=2, task="regression")
    for v in (HUGE_INT, "-" + HUGE_INT, HUGE_FLOAT, "1e999", "-1e999", "1" + "0" * 400):
        for method, url, text, loc in _number_bodies(v):
            body = assert_problem(_send(client, method, url, text), 422, loc)
            assert any(w in body["detail"] for w in ("finite", "overflows", "valid number")), (v[:10], url, body)
        for field in ("seed", "output_dim"):
            text = '{"name": "n", "task": "binary", "input_dim": 2, "FIELD": V}'.replace("FIELD", field)
            r = client.post("/v1/models", content=text.replace("V", v), headers={"Content-Type": "application/json"})
            assert_problem(r, 422, ["body", field])
        r = client.put(
            "/v1/models/r/aliases/production",
            content='{"version": V}'.replace("V", v),
            headers={"Content-Type": "application/json"},
        )
        assert_problem(r, 422, ["body", "version"])
        r = _send(
            client,
            "POST",
            "/v1/models/r/evaluate",
            '{"samples": [{"x": [1, 2], "y": [1, 2]}], "version": V}'.replace("V", v),
        )
        assert_problem(r, 422, ["body", "version"])


def test_duplicate_keys_are_400_naming_the_key_in_every_json_body(client) -> None:
    """Every operation taking a JSON body refuses an object that names a key twice (at the
    top or nested), 400 naming the key, before anything else looks at the body."""
    create_model(client, "m")
    spec: dict[str, Any] = client.get("/openapi.json").json()
    operations = _json_operations(spec)
    assert len(operations) >= 9
    for method, url in operations:
        for text, key in (
            ('{"dup_key": 1, "dup_key": 2}', "dup_key"),
            ('{"a": {"b": [{"yy": 1, "yy": 0}]}}', "yy"),
        ):
            r = client.request(method, url, content=text, headers={"Content-Type": "application/json"})
            body = assert_problem(r, 400)
            assert key in body["detail"] and "duplicate" in body["detail"], (method, url, body)


@pytest.mark.parametrize(
    "text",
    [
        '{"samples": [{"x": [1, 2, 3], "y": 1}], "samples": [{"x": [1, 2, 3], "y": 1}]}',
        '{"samples": [{"x": [1, 2, 3], "y": 1, "y": 0}]}',
        '{"samples": [{"x": [1, 2, 3], "x": [1, 2, 3], "y": 1}]}',
        '{"samples": [{"x": [1, 2, 3], "y": 1}, {"x": [1, 2, 3], "\\u0078": [1, 2, 3], "y": 0}]}',
    ],
)
def test_duplicate_keys_in_update_bodies(client, text: str) -> None:
    """/update reads its body raw: JSON and NDJSON lines refuse duplicate keys too, and
    nothing is stored."""
    create_model(client, "m")
    r = client.post("/v1/models/m/update", content=text, headers={"Content-Type": "application/json"})
    body = assert_problem(r, 400)
    assert "duplicate" in body["detail"], body
    lines = "\n".join(json.dumps(s) for s in json.loads(text)["samples"])
    dup_line = text[text.index("[{") + 1 : text.rindex("}]") + 1]
    if '"samples"' not in dup_line:
        nd = lines + "\n" + dup_line.replace("}, {", "}\n{") + "\n"
        r = client.post("/v1/models/m/update", content=nd, headers={"Content-Type": "application/x-ndjson"})
        body = assert_problem(r, 400)
        assert "duplicate" in body["detail"] and body["errors"][0]["line"] >= 2, body
    assert client.get("/v1/models/m").json()["online"]["accepted"] == 0

"""Property-based run of the app against its own OpenAPI document (schemathesis 4).

Each operation of the live ``/openapi.json`` gets positive and negative cases (with
its path parameters random, or pinned to an existing model and version), sent in
process through schemathesis' ASGI client with an admin key. Every answer must be
a documented status (no 5xx), with the documented content type, headers and schema.

NDJSON bodies (``/update`` takes ``application/x-ndjson``) go through
:func:`ndjson_serializer`, registered with ``schemathesis.serializer``: without it
schemathesis rejects that media type and only JSON bodies were ever sent. The
schema's NDJSON body is a string, so ``/update`` also gets the schema's positive JSON
bodies re-sent as NDJSON, one sample per line (:func:`as_ndjson`), next to random
strings and the negative cases of the string schema.

The stock ``not_a_server_error`` is replaced by one that also admits a documented 503.
Two other stock checks are left out where the schema cannot tell the whole truth
(and ``negative_data_rejection`` for NDJSON cases whose body is a string or a list
of lines, which the string schema cannot tell from valid NDJSON):
``positive_data_acceptance`` (schema-valid bodies may break rules JSON Schema cannot
state: a binary model has ``output_dim`` 1, inputs must match the model's
``input_dim``…) and, for cases with unknown or non-scalar query parameters,
``negative_data_rejection`` (unknown query parameters are ignored and a repeated one
counts with its last value, as HTTP APIs customarily do).

Schemathesis' pytest plugin is not used: its lazy ``from_fixture`` schema fails under
pytest 9 (``Function._nodeid``), and a module-level schema would build the app at import
time. The operation list is collected from an app built without starting it; each test
starts its own app and loads the schema from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.core.settings import Settings
from app.main import create_app
from tests.conftest import ADMIN, auth

MAX_EXAMPLES = 15
NDJSON = "application/x-ndjson"


@schemathesis.serializer(NDJSON)
def ndjson_serializer(ctx: Any, value: Any) -> bytes:
    """NDJSON on the wire: a list is one JSON line per item; a string (what the schema's
    ``type: string`` generates) is sent as its text, as is; anything else is one line.
    Lone surrogates and NaN / Infinity are kept: hostile bodies are the point."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode("utf-8", "surrogatepass") + b"\n" for item in items)


def as_ndjson(case: Any) -> Any:
    """A JSON ``/update`` case re-sent as NDJSON: its samples, one per line."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("samples"), list):
        case.body = body["samples"]
    case.media_type = NDJSON
    return case


_SPEC = create_app(Settings(data_dir=Path("/nonexistent-steward-openapi-only"), admin_key=ADMIN)).openapi()
OPERATIONS = [(path, method) for path, ops in _SPEC["paths"].items() for method in ops]


def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx, except a 503 the operation documents (``/readyz``, a learner that does
    not answer in time)."""
    status = response.status_code
    documented = str(status) in _SPEC["paths"][case.operation.path][case.method.lower()]["responses"]
    assert status < 500 or (status == 503 and documented), f"server error {status}: {response.text[:500]}"


@pytest.fixture
def live(make_settings) -> Iterator[tuple[Any, Any]]:
    """A started app with model ``churn`` (input_dim 3, matching the request examples)
    and its schema, loaded from the app. The online learner runs (``/update?wait=true``
    and ``/checkpoint`` wait for it); jobs stay queued (no worker). Event streams and
    long polls end within 0.2 s."""
    # event streams end (an SSE stream is endless; the in-process client reads it whole)
    app = create_app(
        make_settings(
            run_worker=False,
            events_stream_max_seconds=0.2,
            events_heartbeat_seconds=0.1,
            events_wait_max_seconds=0.2,
        )
    )
    try:
        with asgi.get_client(app) as session:
            spec = {"name": "churn", "task": "binary", "input_dim": 3, "hidden": [4]}
            assert session.post("/v1/models", json=spec, headers=auth()).status_code == 201
            yield session, schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_operation_conforms_to_its_schema(live, path: str, method: str) -> None:
    session, schema = live
    op = schema[path][method.upper()]
    declared_query = {p["name"] for p in _SPEC["paths"][path][method].get("parameters", []) if p["in"] == "query"}
    pinned = {k: v for k, v in {"name": "churn", "version": 1}.items() if "{" + k + "}" in path}
    strategies = [op.as_strategy(), op.as_strategy(GenerationMode.NEGATIVE)]
    if NDJSON in _SPEC["paths"][path][method].get("requestBody", {}).get("content", {}):
        strategies += [
            op.as_strategy(media_type=NDJSON),
            op.as_strategy(GenerationMode.NEGATIVE, media_type=NDJSON),
            op.as_strategy(media_type="application/json").map(as_ndjson),
        ]
    if pinned:
        strategies += [
            op.as_strategy(path_parameters=pinned),
            op.as_strategy(GenerationMode.NEGATIVE, path_parameters=pinned),
        ]
        if NDJSON in _SPEC["paths"][path][method].get("requestBody", {}).get("content", {}):
            strategies += [
                op.as_strategy(path_parameters=pinned, media_type=NDJSON),
                op.as_strategy(path_parameters=pinned, media_type="application/json").map(as_ndjson),
            ]

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure fast
    )
    def check(case: Any) -> None:
        excluded = [positive_data_acceptance, not_a_server_error]
        query = dict(case.query or {})
        if set(query) - declared_query or any(isinstance(v, list | dict) for v in query.values()):
            excluded.append(negative_data_rejection)
        elif case.media_type == NDJSON and isinstance(case.body, str | list):
            # the schema calls NDJSON a string: any string fits it, and a list of samples sent
            # as lines is valid NDJSON that schemathesis still counts as "not a string"
            excluded.append(negative_data_rejection)
        case.call_and_validate(
            session=session,
            headers=auth(),
            excluded_checks=excluded,
            additional_checks=[no_undocumented_server_error],
        )

    check()

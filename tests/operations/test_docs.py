"""The documentation pages work offline: /docs and /redoc load their assets from the
service (never a CDN), Swagger UI keeps the key across reloads, and every error status
in the OpenAPI document has an example of its own status."""

from __future__ import annotations

import re

import pytest

from app.main import DOCS_ASSETS


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_service(anon, page):
    r = anon.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"url:\s*'([^']+)'", html)
    assert urls, html
    for url in urls:
        assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url} from elsewhere"
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    assets = [u for u in urls if u.startswith(DOCS_ASSETS)]
    assert assets
    for url in [u for u in urls if u.startswith("/") and u != "/openapi.json"]:
        a = anon.get(url)
        assert a.status_code == 200 and len(a.content) > 1000, url
        # nothing the bundles draw comes from elsewhere either (ReDoc's own logo did)
        assert b"cdn.redoc.ly" not in a.content, url
    if page == "/docs":
        assert '"persistAuthorization": true' in html
        assert '"validatorUrl": null' in html  # Swagger UI would send the document to validator.swagger.io
        assert anon.get("/openapi.json").status_code == 200


def test_every_error_status_has_an_example_of_its_own_status(client):
    doc = client.get("/openapi.json").json()
    seen = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, resp in op.get("responses", {}).items():
                if code[:1] not in ("4", "5"):
                    continue
                content = resp["content"]["application/problem+json"]
                example = content.get("example")
                assert example is not None, (method, path, code)
                assert example["status"] == int(code), (method, path, code, example)
                assert example["type"].startswith("https://steward.dev/problems/")
                seen.add(int(code))
    assert {400, 401, 403, 404, 409, 412, 413, 415, 422, 507} <= seen


def _free_dict(s: object, depth: int = 0) -> bool:
    """A schema that lets any keys in (Swagger UI would show ``additionalProp1``)."""
    if not isinstance(s, dict) or depth > 4:
        return False
    if s.get("type") == "object" and "properties" not in s and s.get("additionalProperties", True) is not False:
        return True
    if any(_free_dict(x, depth + 1) for k in ("anyOf", "oneOf", "allOf") for x in s.get(k, [])):
        return True
    return s.get("type") == "array" and _free_dict(s.get("items", {}), depth + 1)


def test_schemas_with_free_form_fields_carry_real_examples(client):
    """Wherever a schema has a free-form object, the schema (or the field) shows an example
    with real values, and the example validates against the schema's required fields."""
    comps = client.get("/openapi.json").json()["components"]["schemas"]
    missing = []
    for name, s in comps.items():
        props = s.get("properties", {})
        free = [p for p, ps in props.items() if _free_dict(ps) and "examples" not in ps and "example" not in ps]
        if free and not s.get("examples"):
            missing.append((name, free))
            continue
        # (the document drops null values of examples: a nullable field may be absent)
        needed = {f for f in s.get("required", []) if {"type": "null"} not in props.get(f, {}).get("anyOf", [])}
        for ex in s.get("examples", []):
            assert needed <= set(ex), (name, needed - set(ex))
    assert missing == []

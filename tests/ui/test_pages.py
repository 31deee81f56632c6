"""The dashboard's pages, sign-in and rollback through the app (both databases): sessions
sealed in an HttpOnly cookie, CSRF on the form that changes state, the key's scope and model
restriction as the API applies them, nothing loaded from another site."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_breast_cancer

from app.main import create_app
from app.ui.session import COOKIE
from tests.conftest import ADMIN, auth


@pytest.fixture
def app_client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), follow_redirects=False) as c:
        yield c


def api(c: TestClient, method: str, path: str, key: str = ADMIN, **kw: Any) -> Any:
    r = c.request(method, path, headers={**auth(key), **kw.pop("headers", {})}, **kw)
    assert r.status_code < 300, r.text
    return r.json() if r.content else None


def new_key(c: TestClient, scope: str, models: list[str] | None = None) -> str:
    return str(api(c, "POST", "/v1/keys", json={"name": f"k-{scope}", "scope": scope, "models": models})["key"])


def sign_in(c: TestClient, key: str = ADMIN, next: str = "/ui") -> Any:
    return c.post("/ui/login", data={"key": key, "next": next})


def csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def learn(c: TestClient, name: str = "bc", n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    api(c, "POST", "/v1/models", json={"name": name, "task": "binary", "input_dim": 30, "hidden": [8]})
    body = {"samples": [{"x": x.tolist(), "y": int(t)} for x, t in zip(X[:n], y[:n], strict=True)]}
    api(c, "POST", f"/v1/models/{name}/update?wait=true&timeout=60", json=body)
    return X, y


def test_pages_need_a_session_and_the_login_sets_a_sealed_httponly_cookie(app_client):
    c = app_client
    r = c.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/ui"
    r = c.get("/ui/models/bc?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/models/bc%3Fx%3D1"
    page = c.get("/ui/login?next=/ui/models/bc")
    assert page.status_code == 200 and 'name="key"' in page.text
    bad = sign_in(c, "stw_not-a-key")
    assert bad.status_code == 200 and "not valid" in bad.text and COOKIE not in c.cookies
    r = sign_in(c, next="/ui/models/bc")
    assert r.status_code == 303 and r.headers["location"] == "/ui/models/bc"
    cookie = r.headers["set-cookie"]
    for part in ("HttpOnly", "SameSite=strict", "Path=/ui"):
        assert part.lower() in cookie.lower(), cookie
    assert ADMIN not in cookie  # sealed, not the key in clear
    assert c.get("/ui").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/v1/keys", "/ui//evil", "\\\\x"])
def test_sign_in_never_redirects_off_the_dashboard(app_client, target):
    r = sign_in(app_client, next=target)
    assert r.status_code == 303 and r.headers["location"] == "/ui"


def test_an_altered_or_foreign_cookie_is_no_session(app_client, tmp_path, make_settings):
    c = app_client
    sign_in(c)
    good = c.cookies[COOKIE]
    for value in (good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1], "x" * 50, "", good[::-1], "%%%"):
        c.cookies.set(COOKIE, value, path="/ui")
        assert c.get("/ui").status_code == 303, value
    # a cookie sealed by another deployment (another secrets key) is refused too
    other = make_settings(data_dir=tmp_path / "other")
    with TestClient(create_app(other), follow_redirects=False) as o:
        sign_in(o)
        foreign = o.cookies[COOKIE]
    c.cookies.set(COOKIE, foreign, path="/ui")
    assert c.get("/ui").status_code == 303


def test_revoking_the_key_ends_its_sessions(app_client):
    c = app_client
    key = new_key(c, "read")
    sign_in(c, key)
    assert c.get("/ui").status_code == 200
    kid = next(k for k in api(c, "GET", "/v1/keys")["items"] if k["name"] == "k-read")["id"]
    api(c, "DELETE", f"/v1/keys/{kid}")
    assert c.get("/ui").status_code == 303


def test_model_list_and_page_show_state_curves_and_lineage(app_client):
    c = app_client
    learn(c)
    api(c, "PUT", "/v1/models/bc/aliases/production", json={"version": 1})
    sign_in(c)
    home = c.get("/ui")
    assert home.status_code == 200
    row = re.search(r'<a href="/ui/models/bc">bc</a>.*?</tr>', home.text, re.S)
    assert row and ">active<" in row.group(0) and ">v1<" in row.group(0)  # status, production version
    page = c.get("/ui/models/bc")
    assert page.status_code == 200
    html = page.text
    loss = re.search(r'id="loss-curve".*?</figure>', html, re.S)
    assert loss, "no loss chart"
    pre = re.search(r'class="series s-pre".*?</g>', loss.group(0), re.S)
    assert pre and "<polyline" in pre.group(0)
    hist = api(c, "GET", "/v1/models/bc/metrics/history?points=200")
    assert len(hist["points"]) >= 4  # a point every 100 samples
    drawn = sum(len(p.split()) for p in re.findall(r'<polyline points="([^"]+)"', pre.group(0)))
    drawn += pre.group(0).count("<circle")
    assert drawn == sum(1 for p in hist["points"] if p["prequential"]["loss"] is not None)
    assert 'id="lineage"' in html and 'data-version="1"' in html
    assert "production" in html


def test_version_page_shows_the_per_layer_report(app_client):
    c = app_client
    learn(c)
    job = api(c, "POST", "/v1/models/bc/prune", json={"sparsity": 0.5}, headers={"Prefer": "wait=60"})
    v = job["result"]["version"]
    sign_in(c)
    page = c.get(f"/ui/models/bc/versions/{v}")
    assert page.status_code == 200
    ver = api(c, "GET", f"/v1/models/bc/versions/{v}")
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+) × (\d+)</td>.*?</tr>", page.text, re.S)
    arch = ver["architecture"]
    assert [(int(i), int(o), int(n)) for i, o, n in rows] == [(i, arch[i + 1], arch[i]) for i in range(len(arch) - 1)]
    for i, share in enumerate(ver["metrics"]["layer_sparsity"]):
        assert f"{share * 100:.1f}%" in page.text, i
    lineage = c.get("/ui/models/bc").text
    edge = re.search(r'<g class="edge">.*?>prune</text>', lineage, re.S)
    assert edge, "the lineage names the operation on its edge"


def test_rollback_needs_csrf_and_maintain_and_is_recorded(app_client):
    c = app_client
    learn(c, n=50)
    api(c, "POST", "/v1/models/bc/checkpoint?timeout=30")
    api(c, "PUT", "/v1/models/bc/aliases/production", json={"version": 1})
    api(c, "PUT", "/v1/models/bc/aliases/production", json={"version": 2})
    action = "/ui/models/bc/aliases/production/rollback"

    def production() -> int:
        return int(api(c, "GET", "/v1/models/bc/aliases/production")["version"])

    # a read key sees the page but has no rollback form, and a forged post changes nothing
    reader = new_key(c, "read")
    sign_in(c, reader)
    page = c.get("/ui/models/bc").text
    assert action not in page
    r = c.post(action, data={"csrf": csrf(page), "reason": "x"})
    assert r.status_code == 303 and "maintain" in r.headers["location"] and production() == 2
    # a maintain key: without the token, or with another session's, nothing moves
    sign_in(c, new_key(c, "maintain"))
    page = c.get("/ui/models/bc").text
    assert action in page
    assert c.post(action, data={"reason": "x"}).status_code == 403
    assert c.post(action, data={"csrf": "wrong", "reason": "x"}).status_code == 403
    assert production() == 2
    r = c.post(action, data={"csrf": csrf(page), "reason": "bad numbers"})
    assert r.status_code == 303 and "moved%20back%20to%20version%201" in r.headers["location"]
    assert production() == 1
    [last, *_] = api(c, "GET", "/v1/models/bc/aliases/production/history")["items"]
    assert (last["version"], last["previous"], last["reason"]) == (1, 2, "bad numbers")
    assert last["by"]["key_name"] == "k-maintain"
    shown = c.get(r.headers["location"]).text
    assert "moved back to version 1" in shown and "bad numbers" in shown


def test_a_restricted_key_sees_only_its_models(app_client):
    c = app_client
    for name in ("a", "b"):
        api(c, "POST", "/v1/models", json={"name": name, "task": "binary", "input_dim": 2})
    sign_in(c, new_key(c, "read", ["a"]))
    home = c.get("/ui").text
    assert "/ui/models/a" in home and "/ui/models/b" not in home
    assert c.get("/ui/models/b").status_code == 403
    assert c.get("/ui/models/b/versions/1").status_code == 403
    assert c.get("/ui/models/b/jobs.json").status_code == 403
    assert c.get("/ui/models/nope").status_code == 403  # restricted: not even whether it exists


def test_unknown_things_are_404_pages(app_client):
    c = app_client
    api(c, "POST", "/v1/models", json={"name": "a", "task": "binary", "input_dim": 2})
    sign_in(c)
    for path in ("/ui/models/nope", "/ui/models/a/versions/99", "/ui/models/nope/jobs.json"):
        assert c.get(path).status_code == 404, path
    r = c.post("/ui/models/a/aliases/production/rollback", data={"csrf": csrf(c.get("/ui/models/a").text)})
    assert r.status_code == 404


def test_jobs_json_reports_progress(app_client):
    c = app_client
    learn(c, n=100)
    job = api(c, "POST", "/v1/models/bc/prune", json={"sparsity": 0.3}, headers={"Prefer": "wait=60"})
    sign_in(c)
    items = c.get("/ui/models/bc/jobs.json").json()["items"]
    assert [(j["id"], j["status"], j["progress"]) for j in items] == [(job["id"], "succeeded", 1.0)]


def test_every_page_loads_only_its_own_assets(app_client):
    c = app_client
    learn(c, n=100)
    sign_in(c)
    for path in ("/ui/login", "/ui", "/ui/models/bc", "/ui/models/bc/versions/1"):
        r = c.get(path)
        assert r.status_code == 200, path
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        for url in re.findall(r'(?:src|href)="([^"]+)"', r.text):
            assert url.startswith("/"), (path, url)
        assert " style=" not in r.text  # the CSP allows no inline style
        assert "<script>" not in r.text  # nor inline script
    for asset in ("/ui/static/steward.css", "/ui/static/steward.js", "/ui/static/favicon.svg"):
        assert c.get(asset).status_code == 200, asset


def test_sign_out_needs_the_token_and_ends_the_session(app_client):
    c = app_client
    sign_in(c)
    page = c.get("/ui").text
    assert c.post("/ui/logout", data={"csrf": "nope"}).status_code == 403
    assert c.get("/ui").status_code == 200
    r = c.post("/ui/logout", data={"csrf": csrf(page)})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert c.get("/ui").status_code == 303


@pytest.mark.parametrize("name", ["%00", "a%00", "x" * 65, "a b", "%C3%A9", "-a"])
def test_a_name_the_api_would_refuse_is_a_404_page(app_client, name):
    c = app_client
    api(c, "POST", "/v1/models", json={"name": "a", "task": "binary", "input_dim": 2})
    sign_in(c)
    token = csrf(c.get("/ui/models/a").text)
    for path in (f"/ui/models/{name}", f"/ui/models/{name}/versions/1", f"/ui/models/{name}/jobs.json"):
        assert c.get(path).status_code == 404, path
    for path in (f"/ui/models/{name}/aliases/p/rollback", f"/ui/models/a/aliases/{name}/rollback"):
        assert c.post(path, data={"csrf": token}).status_code == 404, path


def test_a_rollback_reason_is_checked_as_the_api_checks_it(app_client):
    c = app_client
    api(c, "POST", "/v1/models", json={"name": "a", "task": "binary", "input_dim": 2})
    api(c, "PUT", "/v1/models/a/aliases/p", json={"version": 1})
    api(c, "PUT", "/v1/models/a/aliases/p", json={"version": 1, "reason": "again"})
    sign_in(c)
    token = csrf(c.get("/ui/models/a").text)
    history = api(c, "GET", "/v1/models/a/aliases/p/history")["items"]
    for reason in ("x" * 1001, "a\x00b"):
        r = c.post("/ui/models/a/aliases/p/rollback", data={"csrf": token, "reason": reason})
        assert r.status_code == 303 and "error=" in r.headers["location"] and "reason" in r.headers["location"]
    assert api(c, "GET", "/v1/models/a/aliases/p/history")["items"] == history


def test_forms_from_another_site_are_refused(app_client):
    c = app_client
    api(c, "POST", "/v1/models", json={"name": "a", "task": "binary", "input_dim": 2})
    api(c, "PUT", "/v1/models/a/aliases/p", json={"version": 1})
    sign_in(c)
    token = csrf(c.get("/ui/models/a").text)
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        assert c.post("/ui/models/a/aliases/p/rollback", data={"csrf": token}, headers=headers).status_code == 403
        assert c.post("/ui/logout", data={"csrf": token}, headers=headers).status_code == 403
        assert c.post("/ui/login", data={"key": ADMIN}, headers=headers).status_code == 403
    assert c.get("/ui").status_code == 200  # still signed in
    same = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
    assert c.post("/ui/login", data={"key": ADMIN}, headers=same).status_code == 303


def test_a_rollback_after_the_session_ended_signs_in_back_to_the_model(app_client):
    c = app_client
    api(c, "POST", "/v1/models", json={"name": "a", "task": "binary", "input_dim": 2})
    r = c.post("/ui/models/a/aliases/p/rollback", data={"csrf": "x"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/models/a"


def test_behind_a_proxy_every_link_and_redirect_keeps_the_root_path(settings):
    """Served at ``/steward`` (``--root-path``): links, form actions, redirects and the
    cookie's path all start with it."""
    with TestClient(create_app(settings), root_path="/steward", follow_redirects=False) as c:
        api(c, "POST", "/steward/v1/models", json={"name": "a", "task": "binary", "input_dim": 2})
        assert c.get("/steward/").headers["location"] == "/steward/ui"
        r = c.get("/steward/ui/models/a")
        assert r.headers["location"] == "/steward/ui/login?next=/ui/models/a"
        r = c.post("/steward/ui/login", data={"key": ADMIN, "next": "/ui/models/a"})
        assert r.status_code == 303 and r.headers["location"] == "/steward/ui/models/a"
        assert "Path=/steward/ui" in r.headers["set-cookie"]
        page = c.get("/steward/ui/models/a")
        assert page.status_code == 200
        for url in re.findall(r'(?:src|href|action|data-poll|data-versions)="([^"]+)"', page.text):
            assert url.startswith("/steward/"), url

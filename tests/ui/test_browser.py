"""The dashboard and the API docs in a real browser: Playwright drives Debian's Chromium
(``/usr/bin/chromium``, or ``STEWARD_CHROMIUM``; the README's test command installs it)
against a live ``uvicorn`` server on both databases. It signs in, opens a model, sees the
loss curve and the lineage, watches a job end, rolls back an alias, opens a version, and
fails on any console error, page error or failed request. Screenshots are written to
``build/screenshots/`` (or ``STEWARD_SCREENSHOT_DIR``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_breast_cancer

from tests.conftest import ADMIN
from tests.online_helpers import ROOT, Server

playwright = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")

CHROMIUM = os.environ.get("STEWARD_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("STEWARD_SCREENSHOT_DIR", ROOT / "build" / "screenshots"))


def _prepare(server: Server) -> dict[str, Any]:
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    with server.client() as c:

        def ok(r: Any) -> Any:
            assert r.status_code < 300, r.text
            return r.json() if r.content else None

        ok(c.post("/v1/models", json={"name": "cancer", "task": "binary", "input_dim": 30, "hidden": [16]}))
        body = {"samples": [{"x": x.tolist(), "y": int(t)} for x, t in zip(X, y, strict=True)]}
        ok(c.post("/v1/models/cancer/update?wait=true&timeout=120", json=body))
        ok(c.post("/v1/models/cancer/checkpoint?timeout=60"))
        ok(c.put("/v1/models/cancer/aliases/production", json={"version": 1}))
        ok(c.put("/v1/models/cancer/aliases/production", json={"version": 2, "reason": "online v2"}))
        prune = ok(c.post("/v1/models/cancer/prune", json={"sparsity": 0.5}, headers={"Prefer": "wait=120"}))
        hist = ok(c.get("/v1/models/cancer/metrics/history"))
        # queued now, so the page shows it while it runs (it ends however fast the machine is)
        job = ok(c.post("/v1/models/cancer/batch-update", json={"log": {"from_offset": 0}, "epochs": 30}))
    return {"pruned": prune["result"]["version"], "points": len(hist["points"]), "job": job["id"], "n": len(y)}


@pytest.fixture
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run the README's test command (bash scripts/test), which installs it")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_dashboard_in_a_browser(browser, db_url, tmp_path, request):
    SHOTS.mkdir(parents=True, exist_ok=True)
    tag = request.node.callspec.id
    with Server(db_url, tmp_path / "data") as server:
        facts = _prepare(server)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        def failed(r: Any) -> None:
            # a request the page itself gave up as it was left (ReDoc's worker, an icon) is no error
            if "ERR_ABORTED" not in (r.failure or ""):
                problems.append(f"request failed: {r.url} {r.failure}")

        page.on("requestfailed", failed)

        def off_site(resp: Any) -> None:
            if not resp.url.startswith((server.url, f"blob:{server.url}", "data:")):
                problems.append(f"loaded from another site: {resp.url}")
            elif resp.status >= 400:
                problems.append(f"{resp.status} from {resp.url}")

        page.on("response", off_site)

        # the API docs render offline
        page.goto(server.url + "/docs")
        page.locator(".swagger-ui .info .title").wait_for()
        assert "Steward" in page.locator(".swagger-ui .info .title").inner_text()
        page.locator(".opblock").first.wait_for()
        page.screenshot(path=str(SHOTS / f"docs-{tag}.png"))
        page.goto(server.url + "/redoc", wait_until="networkidle")
        page.locator("h1", has_text="Steward").first.wait_for()

        # sign in: a wrong key is refused, the right one lands on the page asked for
        page.goto(server.url + "/ui/models/cancer")
        assert "/ui/login" in page.url
        page.fill("#key", "stw_wrong")
        page.click("button[type=submit]")
        assert "not valid" in page.locator("p.error").inner_text()
        page.fill("#key", ADMIN)
        page.click("main button[type=submit]")
        page.wait_for_url("**/ui/models/cancer")
        assert page.context.cookies()[0]["httpOnly"] is True

        # the loss curve: one vertex per recorded bucket; the lineage: every version, the prune edge
        assert facts["points"] > 1
        line = page.locator("#loss-curve .series.s-pre polyline")
        assert line.count() >= 1
        vertices = sum(len((line.nth(i).get_attribute("points") or "").split()) for i in range(line.count()))
        assert vertices == facts["points"]
        assert page.locator("#loss-curve svg").bounding_box()["height"] > 100
        for v in (1, 2, facts["pruned"]):
            assert page.locator(f'#lineage [data-version="{v}"]').count() == 1
        assert page.locator("#lineage .edge text", has_text="prune").count() == 1
        assert page.locator("#lineage .node.aliased text.alias", has_text="production").count() == 1

        # the job queued before the page opened is followed live to its end (no reload)
        row = page.locator(f'#jobs tr[data-job="{facts["job"]}"] .status .badge')
        row.filter(has_text="succeeded").wait_for(timeout=120_000)
        assert page.locator(f'#jobs tr[data-job="{facts["job"]}"] .pct').inner_text() == "100%"
        page.locator(f'#jobs tr[data-job="{facts["job"]}"] .result a').wait_for()  # the version it made
        page.screenshot(path=str(SHOTS / f"model-{tag}.png"), full_page=True)

        # roll the production alias back, with a reason
        block = page.locator("#alias-production")
        block.locator('input[name="reason"]').fill("v2 looked worse")
        block.locator("button", has_text="Roll back production").click()
        page.locator("p.ok").wait_for()
        assert "production moved back to version 1 (was 2)" in page.locator("p.ok").inner_text()
        assert "v2 looked worse" in page.locator("#alias-production table").inner_text()
        with server.client() as c:
            assert c.get("/v1/models/cancer/aliases/production").json()["version"] == 1
            [entry, *_] = c.get("/v1/models/cancer/aliases/production/history").json()["items"]
            assert entry["by"]["key_id"] and entry["reason"] == "v2 looked worse"
        page.screenshot(path=str(SHOTS / f"rollback-{tag}.png"), full_page=True)

        # a version's page: the per-layer report of the pruned version
        page.locator(f'#lineage [data-version="{facts["pruned"]}"]').click()
        page.wait_for_url(f"**/versions/{facts['pruned']}")
        assert page.locator("#layers tbody tr").count() == 2
        page.screenshot(path=str(SHOTS / f"version-{tag}.png"), full_page=True)

        page.goto(server.url + "/ui")
        assert page.locator("#models tbody tr").count() == 1
        assert page.locator("#models").inner_text().count(str(facts["n"])) >= 1
        page.screenshot(path=str(SHOTS / f"models-{tag}.png"), full_page=True)
        ctx.close()
        assert problems == [], problems

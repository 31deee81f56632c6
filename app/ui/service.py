"""What the dashboard's pages show, gathered from the capability services with the signed-in
key's rights (the same checks as the API: a key restricted to models sees only those).
The pages are views: every change goes through the service the API uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.context import AppContext
from app.core.errors import Forbidden, Invalid
from app.keys.service import Principal
from app.registry.schemas import REASON_MAX
from app.ui import charts

#: how many versions the lineage draws (the newest), and jobs / history entries listed
LINEAGE_MAX, JOBS_MAX, HISTORY_MAX, CURVE_POINTS = 60, 20, 10, 200


@dataclass
class ModelPage:
    model: dict[str, Any]
    aliases: list[dict[str, Any]]
    versions: list[dict[str, Any]]
    lineage: charts.Lineage
    loss: charts.Chart
    accuracy: charts.Chart | None
    recorded: int
    shadows: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    can_maintain: bool


class UiService:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @staticmethod
    def _may(p: Principal, name: str) -> None:
        p.check_model(name)

    def models(self, p: Principal) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            items, cursor = self.ctx.models.page(cursor=cursor, limit=200, allowed=p.models)
            out.extend(m.model_dump(mode="json") for m in items)
            if cursor is None or len(out) >= 1000:
                return out

    def model(self, p: Principal, name: str) -> ModelPage:
        self._may(p, name)
        m = self.ctx.models.view(name).model_dump(mode="json")
        aliases = []
        for a in self.ctx.models.list_aliases(name):
            if a.alias == "latest":  # implicit: the newest version, no history of its own
                continue
            entries, _ = self.ctx.models.alias_history(name, a.alias, cursor=None, limit=HISTORY_MAX)
            aliases.append({**a.model_dump(mode="json"), "history": [e.model_dump(mode="json") for e in entries]})
        versions, _ = self.ctx.models.list_versions(name, cursor=None, limit=LINEAGE_MAX)
        vs = [v.model_dump(mode="json") for v in versions]
        graph = charts.lineage(vs, m["aliases"])
        hist = self.ctx.online.metrics_history(name, from_offset=None, to_offset=None, points=CURVE_POINTS)
        pts = hist.model_dump(mode="json")["points"]
        xs = [pt["offset"] for pt in pts]

        def col(block: str, key: str) -> list[float | None]:
            return [(pt.get(block) or {}).get(key) for pt in pts]

        loss = charts.line_chart(
            "Loss",
            xs,
            [("prequential (learner, test-then-train)", "s-pre", col("prequential", "loss")),
             ("served (labelled predictions)", "s-served", col("served", "loss"))],
        )  # fmt: skip
        acc = None
        if m["task"] != "regression":
            acc = charts.line_chart(
                "Accuracy",
                xs,
                [("prequential", "s-pre", col("prequential", "accuracy")),
                 ("served", "s-served", col("served", "accuracy"))],
            )  # fmt: skip
        jobs, _ = self.ctx.jobs.page(model=name, kind=None, status=None, cursor=None, limit=JOBS_MAX, allowed=p.models)
        return ModelPage(
            model=m,
            aliases=aliases,
            versions=vs,
            lineage=graph,
            loss=loss,
            accuracy=acc,
            recorded=int(hist.recorded),
            shadows=[s.model_dump(mode="json") for s in self.ctx.feedback.shadows(name)],
            jobs=[j.model_dump(mode="json") for j in jobs],
            can_maintain=p.has("maintain"),
        )

    def jobs(self, p: Principal, name: str) -> list[dict[str, Any]]:
        self._may(p, name)
        self.ctx.models.view(name)  # 404 for a model that does not exist
        jobs, _ = self.ctx.jobs.page(model=name, kind=None, status=None, cursor=None, limit=JOBS_MAX, allowed=p.models)
        return [
            {
                "id": j.id,
                "status": j.status,
                "progress": j.progress,
                "kind": j.kind,
                "result": j.result,
                "error": j.error,
            }
            for j in jobs
        ]

    def version(self, p: Principal, name: str, number: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The version's answer, and its per-layer compression report: each layer's shape,
        share of zero weights and weight error against the source (where the version has them)."""
        self._may(p, name)
        v = self.ctx.models.get_version(name, number).model_dump(mode="json")
        return v, layer_report(v)

    def rollback(self, p: Principal, name: str, alias: str, reason: str | None) -> dict[str, Any]:
        self._may(p, name)
        if not p.has("maintain"):
            raise Forbidden(f"rolling back an alias needs a key with scope 'maintain'; this key has {p.scope!r}")
        why = reason or "rolled back from the dashboard"
        if len(why) > REASON_MAX or "\x00" in why:  # as the API checks a reason
            raise Invalid.at(["form", "reason"], f"at most {REASON_MAX} characters, without NUL")
        entry = self.ctx.models.rollback_alias(name, alias, by=p.actor, reason=why)
        return entry.model_dump(mode="json")


def layer_report(v: dict[str, Any]) -> list[dict[str, Any]]:
    arch = v.get("architecture") or []
    metrics = v.get("metrics") or {}
    sparsity = metrics.get("layer_sparsity") or []
    errors = (metrics.get("weight_error") or {}).get("layers") or []
    rows = []
    for i in range(max(len(arch) - 1, 0)):
        rows.append(
            {
                "layer": i,
                "shape": f"{arch[i + 1]} × {arch[i]}",
                "weights": arch[i + 1] * arch[i],
                "sparsity": sparsity[i] if i < len(sparsity) else None,
                "max_abs_error": errors[i].get("max_abs_error") if i < len(errors) else None,
                "mean_abs_error": errors[i].get("mean_abs_error") if i < len(errors) else None,
            }
        )
    return rows

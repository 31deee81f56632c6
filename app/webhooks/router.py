"""/v1/webhooks (admin): subscriptions, their deliveries, a test ping."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from app.core.jsonbody import JSONRoute
from app.core.schemas import Page, problem_responses
from app.deps import AdminKey, Ctx, PageParams
from app.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut

router = APIRouter(route_class=JSONRoute, tags=["webhooks"])
WebhookId = Annotated[str, Path(max_length=64, description="The webhook's id", examples=["wh_5f0c2a9e41d7b3c8"])]


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Subscribe a URL to events (the signing secret is shown in this answer only)",
    description="Each matching event is POSTed as JSON, signed as Standard Webhooks do (`webhook-id`, "
    "`webhook-timestamp`, `webhook-signature: v1,…`), retried with exponential backoff until a 2xx "
    "answer or `STEWARD_WEBHOOK_MAX_ATTEMPTS`. Only http(s) URLs whose host resolves to public addresses "
    "(unless `STEWARD_WEBHOOK_ALLOW_PRIVATE=true`); redirects are not followed. Needs an admin key that "
    "is not restricted to models.",
    responses=problem_responses(400, 401, 403, 422),
    operation_id="create_webhook",
)
async def create_webhook(body: WebhookCreate, ctx: Ctx, p: AdminKey, response: Response) -> WebhookCreated:
    p.check_unrestricted()
    out = await run_in_threadpool(ctx.webhooks.create, body, p.actor)  # resolves the host: off the loop
    response.headers["Location"] = f"/v1/webhooks/{out.id}"
    return out


@router.get(
    "/webhooks",
    response_model=Page[WebhookOut],
    summary="List webhooks (never their secrets)",
    responses=problem_responses(401, 403, 422),
    operation_id="list_webhooks",
)
def list_webhooks(ctx: Ctx, p: AdminKey, page: PageParams) -> Page[WebhookOut]:
    p.check_unrestricted()
    limit, cursor = page
    items, nxt = ctx.webhooks.page(cursor=cursor, limit=limit)
    return Page[WebhookOut](items=items, next_cursor=nxt)


@router.get(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    summary="Get a webhook",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_webhook",
)
def get_webhook(webhook_id: WebhookId, ctx: Ctx, p: AdminKey) -> WebhookOut:
    p.check_unrestricted()
    return ctx.webhooks.get(webhook_id)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    summary="Delete a webhook and its pending deliveries",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_webhook",
)
def delete_webhook(webhook_id: WebhookId, ctx: Ctx, p: AdminKey) -> Response:
    p.check_unrestricted()
    ctx.webhooks.delete(webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=Page[DeliveryOut],
    summary="A webhook's deliveries, newest first: attempts, last status, next attempt, delivered_at",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_deliveries",
)
def list_deliveries(
    webhook_id: WebhookId,
    ctx: Ctx,
    p: AdminKey,
    page: PageParams,
    status: Annotated[Literal["pending", "sending", "delivered", "failed"] | None, Query()] = None,
) -> Page[DeliveryOut]:
    p.check_unrestricted()
    limit, cursor = page
    items, nxt = ctx.webhooks.deliveries(webhook_id, cursor=cursor, limit=limit, status=status)
    return Page[DeliveryOut](items=items, next_cursor=nxt)


@router.get(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    summary="One delivery with its attempts",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_delivery",
)
def get_delivery(
    webhook_id: WebhookId,
    delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    ctx: Ctx,
    p: AdminKey,
) -> DeliveryOut:
    p.check_unrestricted()
    return ctx.webhooks.delivery(webhook_id, delivery_id)


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send a `ping` message to this webhook",
    description="Queues a `ping` delivery (type `ping`, `webhook-id` `ping_…`) sent like any event; its "
    "outcome shows at the `Location` answered.",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="test_webhook",
)
def test_webhook(webhook_id: WebhookId, ctx: Ctx, p: AdminKey, response: Response) -> DeliveryOut:
    p.check_unrestricted()
    out = ctx.webhooks.ping(webhook_id)
    response.headers["Location"] = f"/v1/webhooks/{webhook_id}/deliveries/{out.id}"
    return out

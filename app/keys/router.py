"""/v1/keys (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.core.jsonbody import JSONRoute
from app.core.schemas import Page, problem_responses
from app.deps import AdminKey, Ctx, PageParams
from app.keys.schemas import KeyCreate, KeyCreated, KeyOut

router = APIRouter(route_class=JSONRoute, tags=["keys"])


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (the secret is shown in this answer only)",
    responses=problem_responses(400, 401, 403, 422),
    operation_id="create_key",
)
def create_key(body: KeyCreate, ctx: Ctx, p: AdminKey) -> KeyCreated:
    p.check_unrestricted()
    return ctx.keys.create(body)


@router.get(
    "/keys",
    response_model=Page[KeyOut],
    summary="List active API keys (never their secrets)",
    responses=problem_responses(401, 403, 422),
    operation_id="list_keys",
)
def list_keys(ctx: Ctx, p: AdminKey, page: PageParams) -> Page[KeyOut]:
    p.check_unrestricted()
    limit, cursor = page
    items, nxt = ctx.keys.page(cursor=cursor, limit=limit)
    return Page[KeyOut](items=items, next_cursor=nxt)


@router.delete(
    "/keys/{key_id}",
    status_code=204,
    summary="Revoke an API key at once",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="revoke_key",
)
def revoke_key(key_id: Annotated[str, Path(max_length=64)], ctx: Ctx, p: AdminKey) -> Response:
    p.check_unrestricted()
    ctx.keys.revoke(key_id)
    return Response(status_code=204)

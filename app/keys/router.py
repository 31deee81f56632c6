"""/v1/keys (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.core.errors import Forbidden
from app.core.schemas import Page, problem_responses
from app.deps import AdminKey, Ctx, PageParams
from app.keys.schemas import KeyCreate, KeyCreated, KeyOut

router = APIRouter(tags=["keys"])


def unrestricted(p: AdminKey) -> None:
    """Key management needs an admin key without a model restriction: a restricted one
    could otherwise mint itself an unrestricted key."""
    if p.models is not None:
        raise Forbidden("managing API keys needs an admin key that is not restricted to models")


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (the secret is shown in this answer only)",
    responses=problem_responses(400, 401, 403, 422),
    operation_id="create_key",
)
def create_key(body: KeyCreate, ctx: Ctx, p: AdminKey) -> KeyCreated:
    unrestricted(p)
    with ctx.db.write() as s:
        return ctx.keys.create(s, body)


@router.get(
    "/keys",
    response_model=Page[KeyOut],
    summary="List active API keys (never their secrets)",
    responses=problem_responses(401, 403, 422),
    operation_id="list_keys",
)
def list_keys(ctx: Ctx, p: AdminKey, page: PageParams) -> Page[KeyOut]:
    unrestricted(p)
    limit, cursor = page
    with ctx.db.read() as s:
        items, nxt = ctx.keys.page(s, cursor=cursor, limit=limit)
    return Page[KeyOut](items=items, next_cursor=nxt)


@router.delete(
    "/keys/{key_id}",
    status_code=204,
    summary="Revoke an API key at once",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="revoke_key",
)
def revoke_key(key_id: Annotated[str, Path(max_length=64)], ctx: Ctx, p: AdminKey) -> Response:
    unrestricted(p)
    with ctx.db.write() as s:
        ctx.keys.revoke(s, key_id)
    return Response(status_code=204)

"""/v1/models, their aliases and versions (list, get, download weights)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.core.errors import Invalid
from app.core.jsonbody import JSONRoute
from app.core.schemas import NAME_PATTERN, Page, Text, problem_responses
from app.deps import (
    Ctx,
    MaintainKey,
    ModelAdmin,
    ModelMaintain,
    ModelNamePath,
    ModelRead,
    PageParams,
    ReadKey,
    VersionPath,
)
from app.registry.models import Precondition
from app.registry.schemas import (
    REASON_MAX,
    AliasEntryOut,
    AliasList,
    AliasOut,
    AliasPut,
    AliasRollback,
    MetadataPatch,
    ModelCreate,
    ModelOut,
    Operation,
    VersionOut,
)

router = APIRouter(route_class=JSONRoute)
AliasPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, examples=["production"])]


@router.post(
    "/models",
    tags=["models"],
    status_code=201,
    response_model=ModelOut,
    summary="Create a model and its version 1",
    responses=problem_responses(400, 401, 403, 409, 422),
    operation_id="create_model",
)
def create_model(body: ModelCreate, ctx: Ctx, p: MaintainKey, response: Response) -> ModelOut:
    p.check_model(body.name)
    out = ctx.models.create(body)
    ctx.metrics.versions.labels("init").inc()
    response.headers["Location"] = f"/v1/models/{out.name}"
    return out


@router.get(
    "/models",
    tags=["models"],
    response_model=Page[ModelOut],
    summary="List models",
    responses=problem_responses(401, 403, 422),
    operation_id="list_models",
)
def list_models(ctx: Ctx, p: ReadKey, page: PageParams, tag: TagQuery = None, q: SearchQuery = None) -> Page[ModelOut]:
    limit, cursor = page
    items, nxt = ctx.models.page(cursor=cursor, limit=limit, allowed=p.models, tags=parse_tags(tag), q=q)
    return Page[ModelOut](items=items, next_cursor=nxt)


@router.patch(
    "/models/{name}",
    tags=["models"],
    response_model=ModelOut,
    summary="Change a model's description and tags",
    description="Only `description` and `tags` change (any other field is a 422 naming it). `tags` is a JSON "
    'merge patch: `{"team": "growth"}` sets a tag, `{"stage": null}` removes one, the others stay.',
    responses=problem_responses(400, 401, 403, 404, 422),
    operation_id="patch_model",
)
def patch_model(name: ModelNamePath, body: MetadataPatch, ctx: Ctx, _: ModelMaintain) -> ModelOut:
    return ctx.models.patch(name, body)


@router.get(
    "/models/{name}",
    tags=["models"],
    response_model=ModelOut,
    summary="Get a model: spec, latest version, aliases, online state",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_model",
)
def get_model(name: ModelNamePath, ctx: Ctx, _: ModelRead) -> ModelOut:
    return ctx.models.view(name)


@router.delete(
    "/models/{name}",
    tags=["models"],
    status_code=204,
    summary="Delete a model with its versions, log and jobs (admin)",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="delete_model",
)
def delete_model(name: ModelNamePath, ctx: Ctx, p: ModelAdmin) -> Response:
    ctx.models.delete(name, by=p.actor)
    return Response(status_code=204)


@router.get(
    "/models/{name}/aliases",
    tags=["models"],
    response_model=AliasList,
    summary="List aliases (with the implicit `latest`)",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_aliases",
)
def list_aliases(name: ModelNamePath, ctx: Ctx, _: ModelRead) -> AliasList:
    return AliasList(items=ctx.models.list_aliases(name))


ETAG_DOC = {"ETag": {"description": 'The version the alias points to, quoted: `"5"`', "schema": {"type": "string"}}}
IfMatch = Annotated[
    str | None,
    Header(
        max_length=1024,
        description='Move only if the alias points to this version now: `"5"` (or `"4", "5"`); `*`: '
        "if it exists. Otherwise 412 and nothing changes.",
        examples=['"5"'],
    ),
]
TagQuery = Annotated[
    list[str] | None,
    Query(
        max_length=16,
        description="`key:value`: only those with this tag (repeatable: all must match)",
        examples=[["team:growth"]],
    ),
]
SearchQuery = Annotated[
    Text | None, Query(min_length=1, max_length=200, description="Text in the name or the description (any case)")
]


def parse_tags(values: list[str] | None) -> list[tuple[str, str]]:
    """``key:value`` pairs (split at the first colon); 422 at ``query.tag.i`` otherwise."""
    out = []
    for i, raw in enumerate(values or []):
        key, sep, value = raw.partition(":")
        if not sep or not key or len(key) > 128 or len(value) > 1024 or "\x00" in raw:
            raise Invalid.at(["query", "tag", i], "expected key:value (a key of 1–128 characters, no NUL)")
        out.append((key, value))
    return out


Reason = Annotated[Text | None, Query(max_length=REASON_MAX, description="Why (kept in the alias history)")]


def parse_if_match(value: str | None) -> Precondition:
    """``If-Match`` (RFC 9110 strong comparison): ``*`` or a list of quoted versions
    (an unquoted number is read as one; a weak ``W/`` tag never matches)."""
    if value is None:
        return None
    if value.strip() == "*":
        return "*"
    out: set[int] = set()
    for part in value.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            continue
        bare = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
        if not bare.isascii() or not bare.isdigit() or len(bare) > 10:
            raise Invalid.at(["header", "if-match"], 'expected "*" or quoted versions such as "5"')
        out.add(int(bare))
    return frozenset(out)


def parse_time(value: str, loc: list[str | int]) -> datetime:
    """An RFC 3339 time with its offset (``2026-12-01T09:30:00Z``)."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid.at(loc, "expected an RFC 3339 time such as 2026-12-01T09:30:00Z") from None
    if at.tzinfo is None:
        raise Invalid.at(loc, "the time needs its offset (Z or ±hh:mm)")
    try:
        return at.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC time
        raise Invalid.at(loc, "the time is out of range") from None


@router.get(
    "/models/{name}/aliases/{alias}",
    tags=["models"],
    response_model=AliasOut,
    summary="Get an alias (`ETag`: the version it points to)",
    responses={200: {"headers": ETAG_DOC}, **problem_responses(401, 403, 404, 422)},
    operation_id="get_alias",
)
def get_alias(name: ModelNamePath, alias: AliasPath, ctx: Ctx, _: ModelRead, response: Response) -> AliasOut:
    out = ctx.models.get_alias(name, alias)
    response.headers["ETag"] = f'"{out.version}"'
    return out


@router.put(
    "/models/{name}/aliases/{alias}",
    tags=["models"],
    response_model=AliasOut,
    summary="Point an alias at a version (promote / roll back), recorded in its history",
    description='With `If-Match: "<version>"` the move happens only if the alias points there now '
    "(compare-and-set: of two clients that read the same version, one wins and the other gets 412).",
    responses={
        200: {"headers": ETAG_DOC},
        201: {"description": "Alias created", "model": AliasOut, "headers": ETAG_DOC},
        **problem_responses(400, 401, 403, 404, 412, 422),
    },
    operation_id="put_alias",
)
def put_alias(
    name: ModelNamePath,
    alias: AliasPath,
    body: AliasPut,
    ctx: Ctx,
    p: ModelMaintain,
    response: Response,
    if_match: IfMatch = None,
) -> AliasOut:
    expected = parse_if_match(if_match)
    out, created = ctx.models.put_alias(name, alias, body.version, by=p.actor, reason=body.reason, if_match=expected)
    response.status_code = 201 if created else 200
    response.headers["ETag"] = f'"{out.version}"'
    return out


@router.delete(
    "/models/{name}/aliases/{alias}",
    tags=["models"],
    status_code=204,
    summary="Remove an alias, recorded in its history",
    responses=problem_responses(401, 403, 404, 412, 422),
    operation_id="delete_alias",
)
def delete_alias(
    name: ModelNamePath,
    alias: AliasPath,
    ctx: Ctx,
    p: ModelMaintain,
    reason: Reason = None,
    if_match: IfMatch = None,
) -> Response:
    expected = parse_if_match(if_match)
    ctx.models.delete_alias(name, alias, by=p.actor, reason=reason, if_match=expected)
    return Response(status_code=204)


@router.get(
    "/models/{name}/aliases/{alias}/history",
    tags=["models"],
    response_model=Page[AliasEntryOut] | AliasEntryOut,
    summary="An alias's changes, newest first; with `at`, the one in force then",
    description="Every change — `PUT`, `DELETE`, a job's promotion, a rollback — with `by` (the key or "
    "the job) and `reason`. `?at=<RFC 3339 time>` answers the entry in force at that time instead "
    "(404 if the alias did not exist then).",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="alias_history",
)
def alias_history(
    name: ModelNamePath,
    alias: AliasPath,
    ctx: Ctx,
    _: ModelRead,
    page: PageParams,
    at: Annotated[
        str | None,
        Query(max_length=64, description="RFC 3339 time: the entry in force then", examples=["2026-12-01T09:30:00Z"]),
    ] = None,
) -> Page[AliasEntryOut] | AliasEntryOut:
    if at is not None:
        return ctx.models.alias_at(name, alias, parse_time(at, ["query", "at"]))
    limit, cursor = page
    items, nxt = ctx.models.alias_history(name, alias, cursor=cursor, limit=limit)
    return Page[AliasEntryOut](items=items, next_cursor=nxt)


@router.post(
    "/models/{name}/aliases/{alias}/rollback",
    tags=["models"],
    response_model=AliasEntryOut,
    summary="Move an alias back to its previous version",
    description="Undoes the alias's last change (as `kubectl rollout undo` does): it moves back to that "
    "change's `previous` version — a second rollback undoes the first; a deleted alias is restored. "
    "409 when the last change has no previous version.",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
    operation_id="rollback_alias",
)
def rollback_alias(
    name: ModelNamePath, alias: AliasPath, ctx: Ctx, p: ModelMaintain, body: AliasRollback | None = None
) -> AliasEntryOut:
    return ctx.models.rollback_alias(name, alias, by=p.actor, reason=body.reason if body else None)


@router.get(
    "/models/{name}/versions",
    tags=["versions"],
    response_model=Page[VersionOut],
    summary="List versions, newest first",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="list_versions",
)
def list_versions(
    name: ModelNamePath,
    ctx: Ctx,
    _: ModelRead,
    page: PageParams,
    operation: Annotated[Operation | None, Query(description="Only versions made by this operation")] = None,
    tag: TagQuery = None,
) -> Page[VersionOut]:
    limit, cursor = page
    items, nxt = ctx.models.list_versions(name, cursor=cursor, limit=limit, operation=operation, tags=parse_tags(tag))
    return Page[VersionOut](items=items, next_cursor=nxt)


@router.patch(
    "/models/{name}/versions/{version}",
    tags=["versions"],
    response_model=VersionOut,
    summary="Change a version's description and tags (its parameters never change)",
    description="As `PATCH /models/{name}`: only `description` and `tags` (a JSON merge patch).",
    responses=problem_responses(400, 401, 403, 404, 422),
    operation_id="patch_version",
)
def patch_version(
    name: ModelNamePath, version: VersionPath, body: MetadataPatch, ctx: Ctx, _: ModelMaintain
) -> VersionOut:
    return ctx.models.patch_version(name, version, body)


@router.get(
    "/models/{name}/versions/{version}",
    tags=["versions"],
    response_model=VersionOut,
    summary="Get a version",
    responses=problem_responses(401, 403, 404, 422),
    operation_id="get_version",
)
def get_version(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> VersionOut:
    return ctx.models.get_version(name, version)


@router.get(
    "/models/{name}/versions/{version}/weights",
    tags=["versions"],
    summary="Download a version's parameters (safetensors)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "safetensors file: layers.{i}.weight [out, in], layers.{i}.bias [out]",
            "content": {"application/octet-stream": {}},
        },
        **problem_responses(401, 403, 404, 422),
    },
    operation_id="download_weights",
)
def download_weights(name: ModelNamePath, version: VersionPath, ctx: Ctx, _: ModelRead) -> StreamingResponse:
    m, v, chunks, length = ctx.models.download(name, version)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(length),
            "Content-Disposition": f'attachment; filename="{m.name}-v{v.version}.safetensors"',
            "X-Steward-Blob-SHA256": v.blob_sha256,
        },
    )

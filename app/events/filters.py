"""Which events a reader (or a webhook) wants: types by name or by ``group.*`` pattern,
and models (a key restricted to models sees only theirs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.core.errors import Forbidden, Invalid, Loc
from app.core.outbox import EVENT_TYPES

GROUPS = frozenset(t.split(".", 1)[0] for t in EVENT_TYPES)


def check_patterns(patterns: Iterable[str], loc: Loc) -> list[str]:
    """Event types or patterns: an exact type, ``<group>.*`` (``job.*``) or ``*``; anything
    else is a 422 at ``loc + [i]``."""
    out = []
    for i, p in enumerate(patterns):
        if p == "*" or p in EVENT_TYPES or (p.endswith(".*") and p[:-2] in GROUPS):
            out.append(p)
        else:
            raise Invalid.at(
                [*loc, i],
                f"unknown event type {p!r}: one of {', '.join(EVENT_TYPES)}, a group such as 'job.*', or '*'",
            )
    return out


def matches(patterns: Sequence[str], type_: str) -> bool:
    return any(p == "*" or p == type_ or (p.endswith(".*") and type_.startswith(p[:-1])) for p in patterns)


@dataclass(frozen=True)
class EventFilter:
    """``models`` None: every model (and events of none); ``types`` None: every type."""

    models: frozenset[str] | None = None
    types: tuple[str, ...] | None = None

    def admits(self, type_: str, model: str | None) -> bool:
        if self.models is not None and model not in self.models:
            return False
        return self.types is None or matches(self.types, type_)

    @property
    def exact(self) -> list[str] | None:
        """The exact types of ``types`` (None: every type)."""
        if self.types is None or "*" in self.types:
            return None
        return [t for t in self.types if not t.endswith(".*")]

    @property
    def prefixes(self) -> list[str]:
        if self.types is None or "*" in self.types:
            return []
        return [t[:-1] for t in self.types if t.endswith(".*")]


def reader_filter(
    allowed: Sequence[str] | None, models: Sequence[str] | None, types: Sequence[str] | None
) -> EventFilter:
    """A reader's filter: the models asked for (``model=``, repeatable) within the key's
    models, and the types asked for (``type=``, repeatable, patterns allowed)."""
    scope: frozenset[str] | None = frozenset(allowed) if allowed is not None else None
    for m in models or ():
        if scope is not None and m not in scope:
            raise Forbidden(f"this key is not allowed to use model {m!r}")
    if models:
        asked = frozenset(models)
        scope = asked if scope is None else scope & asked
    return EventFilter(models=scope, types=tuple(check_patterns(types, ["query", "type"])) if types else None)

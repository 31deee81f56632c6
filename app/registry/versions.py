"""Immutable versions: store a network as a blob + row, load one back, resolve
``version`` / ``alias`` references, serve downloads, import uploads.

The stored blob is a canonical safetensors file whose ``__metadata__`` holds no
per-version data, so the same parameters always have the same sha256 (an
import of a downloaded file reproduces its source's sha256): Steward writes the
file itself (:func:`write_safetensors`), with sorted metadata keys and a fixed
tensor order (the safetensors library orders metadata keys at random), straight
from the arrays, never building a large file in memory. Downloads carry
the model name, version and task in ``__metadata__``: the header is rewritten
on the fly and the tensor bytes are streamed from the blob unchanged.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.blobs import BlobStore
from app.core.errors import Invalid, Loc, NotFound, decoding
from app.core.outbox import emit
from app.core.tables import Model, ServedMetrics, Version, utcnow
from app.engine import codec
from app.engine.nn.network import Network
from app.interop.safetensors import (
    FORMAT,
    array_chunks,
    decode_upload,
    encode,
    encode_to,
    read_tensors,
    safetensors_parts,
)
from app.migration.repository import ExportRepository
from app.registry.repository import AliasRepository, VersionRepository
from app.registry.schemas import ServedOut, VersionOut

#: Blobs up to this size are built in memory (one copy of the parameters), larger ones
#: are written straight from the arrays to the file.
SMALL_BLOB_BYTES = 4 << 20
MAX_VERSION = 2**31 - 1  # versions.version is a 32-bit INTEGER


def architecture(net: Network) -> list[int]:
    return [net.input_dim, *net.hidden, net.output_dim]


def tensors_architecture(tensors: dict[str, np.ndarray]) -> list[int]:
    """``[input_dim, *hidden, output_dim]`` from the weight shapes of a stored tensor set
    (dense ``layers.{i}.weight`` or sparse ``layers.{i}.weight.shape``), without decoding."""
    shapes: dict[int, tuple[int, int]] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] == "layers" and parts[2] == "weight":
            if len(parts) == 3:
                shapes[int(parts[1])] = (int(t.shape[0]), int(t.shape[1]))
            elif parts[3:] == ["shape"]:
                shapes[int(parts[1])] = (int(t[0]), int(t[1]))
    dims = [shapes[0][1]] if shapes else []
    return dims + [shapes[i][0] for i in range(len(shapes))]


# --------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class StoredBlob:
    """A version's parameters, written to the blob store and not yet referenced by a row."""

    sha256: str
    size_bytes: int
    encoding: str
    dtype: str
    sparsity: float
    architecture: list[int]
    state_sha256: str | None = None
    net: Network | None = field(default=None, repr=False, compare=False)


class NetworkCache:
    """Loaded, dequantized networks by blob sha256 (LRU bounded in bytes), so a
    quantized or sparse version is decoded once, not per request."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, tuple[Network, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, sha: str) -> Network | None:
        with self._lock:
            hit = self._d.get(sha)
            if hit is None:
                return None
            self._d.move_to_end(sha)
            return hit[0]

    def put(self, sha: str, net: Network) -> None:
        size = net.n_params * 4
        with self._lock:
            if sha in self._d:
                return
            self._d[sha] = (net, size)
            self._size += size
            while self._size > self.max_bytes and len(self._d) > 1:
                _, (_, s) = self._d.popitem(last=False)
                self._size -= s


# --------------------------------------------------------------------------- service
class VersionService:
    """Everything about versions; callers pass the Session of their unit of work."""

    def __init__(self, blobs: BlobStore, cache: NetworkCache, max_header: int) -> None:
        self.blobs = blobs
        self.cache = cache
        self.max_header = max_header

    # ---- create: store() before the write transaction, add() inside it
    def store(
        self,
        *,
        net: Network | None = None,
        tensors: dict[str, np.ndarray] | None = None,
        encoding: str = "dense",
        state: bytes | None = None,
        dtype: str | None = None,
        sparsity: float | None = None,
    ) -> StoredBlob:
        """Write a version's blob (and optimizer state) to the blob store, fsynced, before
        any write transaction opens: the CPU work and the fsyncs never hold the write lock.

        Give ``net`` (stored dense float32) or already-encoded ``tensors`` plus
        ``encoding`` (quantized / sparse forms made by the engine), or both (then ``net``
        is what ``tensors`` decode to, and is cached by :meth:`add`). The blob is written
        straight from the arrays (no copy of the model in memory). A blob whose row never
        commits is unreferenced garbage, never a half-made version.
        """
        if tensors is None:
            assert net is not None
            tensors = codec.to_tensors(net)
        if sum(int(t.nbytes) for t in tensors.values()) <= SMALL_BLOB_BYTES:
            # in memory: hashed before writing, so an existing blob is not rewritten, and
            # two fsyncs (file, directory) instead of put_file's three and a read-back
            sha, size = self.blobs.put(encode(tensors, encoding))
        else:
            sha, size = self.blobs.put_file(lambda path: encode_to(path, tensors, encoding))
        state_sha = self.blobs.put(state)[0] if state is not None else None
        d, sp = codec.describe(tensors)
        return StoredBlob(
            sha256=sha,
            size_bytes=size,
            encoding=encoding,
            dtype=dtype or d,
            sparsity=float(sparsity if sparsity is not None else sp),
            architecture=architecture(net) if net is not None else tensors_architecture(tensors),
            state_sha256=state_sha,
            net=net,
        )

    def add(
        self,
        s: Session,
        model: Model,
        blob: StoredBlob,
        *,
        operation: str,
        parent: int | None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        applied_through: int | None = None,
        job_id: str | None = None,
    ) -> Version:
        """Add the next version row for a stored blob to ``s``'s transaction (milliseconds:
        no CPU work, no blob I/O). The caller holds the model row lock (``for_update``)."""
        repo = VersionRepository(s)
        number = repo.latest_number(model.id) + 1
        row = Version(
            model_id=model.id,
            version=number,
            parent=parent,
            operation=operation,
            params=params or {},
            metrics=metrics or {},
            blob_sha256=blob.sha256,
            size_bytes=blob.size_bytes,
            dtype=blob.dtype,
            sparsity=blob.sparsity,
            encoding=blob.encoding,
            architecture=blob.architecture,
            applied_through=applied_through,
            state_sha256=blob.state_sha256,
            job_id=job_id,
            created_at=utcnow(),
        )
        repo.add(row)
        model.updated_at = utcnow()
        emit(
            s,
            "version.created",
            model.name,
            {
                "version": number,
                "operation": operation,
                "parent": parent,
                "sha256": blob.sha256,
                "size_bytes": blob.size_bytes,
                "dtype": blob.dtype,
                "sparsity": blob.sparsity,
                "job": job_id,
                **({"applied_through": applied_through} if applied_through is not None else {}),
            },
        )
        if blob.net is not None:
            self.cache.put(blob.sha256, blob.net)
        return row

    # ---- read
    def decode(self, model: Model, tensors: dict[str, np.ndarray], encoding: str = "dense") -> Network:
        """Stored or uploaded tensors → float32 Network (checks names, shapes, dtypes, finiteness)."""
        if encoding == "sparse" or any(k.endswith((".mask", ".values", ".shape")) for k in tensors):
            from app.engine.compress import sparse

            tensors = sparse.decode(tensors)
        net = codec.from_tensors(
            tensors,
            task=model.task,
            activation=model.activation,
            input_dim=model.input_dim,
            output_dim=model.output_dim,
            n_layers=len(model.hidden) + 1,
        )
        return net

    def load(self, model: Model, v: Version) -> Network:
        """The float32 network of version ``v`` (cached by sha256)."""
        net = self.cache.get(v.blob_sha256)
        if net is None:
            net = self.load_owned(model, v)
            self.cache.put(v.blob_sha256, net)
        return net

    def load_owned(self, model: Model, v: Version) -> Network:
        """A fresh float32 network of ``v``, read from its blob and not cached: the caller
        owns it and may change it in place (peak memory: about the network once)."""
        return self.decode(model, read_tensors(self.blobs.path(v.blob_sha256)), v.encoding)

    def stored_tensors(self, v: Version) -> dict[str, np.ndarray]:
        return read_tensors(self.blobs.path(v.blob_sha256))

    def get(self, s: Session, model: Model, number: int) -> Version:
        # Numbers outside the column's range exist nowhere (and would overflow the driver).
        v = VersionRepository(s).get(model.id, number) if 1 <= number <= MAX_VERSION else None
        if v is None:
            raise NotFound(f"model {model.name!r} has no version {number}")
        return v

    def resolve(self, s: Session, model: Model, *, version: int | None, alias: str | None) -> Version:
        """A version by number, by alias (``latest`` implicit) or by default
        (alias ``production`` if set, else latest)."""
        if version is not None:
            return self.get(s, model, version)
        if alias is None:
            a = AliasRepository(s).get(model.id, "production")
            if a is not None:
                return self.get(s, model, a.version)
            alias = "latest"
        if alias == "latest":
            v = VersionRepository(s).latest(model.id)
            if v is None:
                raise NotFound(f"model {model.name!r} has no versions")
            return v
        a = AliasRepository(s).get(model.id, alias)
        if a is None:
            raise NotFound(f"model {model.name!r} has no alias {alias!r}")
        return self.get(s, model, a.version)

    def resolve_ref(self, s: Session, model: Model, ref: int | str | None) -> Version:
        """``from``-style reference: a version number, an alias name, or None (latest)."""
        if ref is None:
            return self.resolve(s, model, version=None, alias="latest")
        if isinstance(ref, int):
            return self.get(s, model, ref)
        return self.resolve(s, model, version=None, alias=ref)

    def resolve_from(
        self, s: Session, model: Model, ref: int | str | None, loc: Loc = ("body", "from")
    ) -> tuple[Version, dict[str, Any]]:
        """A job body's ``from`` (number, alias, or None for latest): the version, and the
        job params that record it (``from`` as given, ``"latest"`` by default, and the
        resolved ``from_version``). An unknown one is a 422 at ``loc``."""
        try:
            v = self.resolve_ref(s, model, ref)
        except NotFound as e:
            raise Invalid.at(list(loc), e.detail) from None
        return v, {"from": ref if ref is not None else "latest", "from_version": v.version}

    def exports(self, s: Session, v: Version) -> list[dict[str, Any]]:
        return [
            {
                "target": e.target,
                "sha256": e.blob_sha256,
                "size_bytes": e.size_bytes,
                "media_type": e.media_type,
                "created_at": e.created_at.isoformat(),
            }
            for e in ExportRepository(s).for_version(v.id)
        ]

    # ---- download
    def download(self, model: Model, v: Version) -> tuple[Iterator[bytes], int]:
        """The dense API-layout safetensors file of ``v`` with name / version / task
        in ``__metadata__``: (chunks, total length). Quantized versions keep their
        integer weights + scales; sparse storage is densified."""
        path = self.blobs.path(v.blob_sha256)
        meta = {
            "format": FORMAT,
            "model": model.name,
            "version": str(v.version),
            "task": model.task,
            "activation": model.activation,
            "operation": v.operation,
        }
        if v.encoding == "sparse":
            from app.engine.compress import sparse

            tensors = sparse.decode(read_tensors(path))
            meta["encoding"] = "quantized" if v.dtype in ("int8", "uint8", "float16") else "dense"
            head, arrays = safetensors_parts(tensors, meta)
            length = len(head) + sum(a.nbytes for a in arrays)

            def dense_chunks() -> Iterator[bytes]:
                yield head
                for chunk in array_chunks(arrays):
                    yield bytes(chunk)

            return dense_chunks(), length
        with path.open("rb") as f:
            head8 = f.read(8)
            (n,) = struct.unpack("<Q", head8)
            header = json.loads(f.read(n))
        meta["encoding"] = v.encoding
        header["__metadata__"] = meta
        new_head = json.dumps(header, separators=(",", ":")).encode()
        new_head += b" " * (-len(new_head) % 8)
        body_len = path.stat().st_size - 8 - n

        def chunks() -> Iterator[bytes]:
            yield struct.pack("<Q", len(new_head)) + new_head
            with path.open("rb") as f:
                f.seek(8 + n)
                while chunk := f.read(1 << 20):
                    yield chunk

        return chunks(), 8 + len(new_head) + body_len

    # ---- import
    def decode_safetensors(self, model: Model, data: bytes) -> StoredBlob:
        """Check an uploaded safetensors file against ``model`` and store it (no transaction)."""
        tensors = decode_upload(data, max_header=self.max_header)
        if not tensors:
            raise Invalid.at(["body"], "the file holds no tensors")
        # 422, never a 500; numpy's overflow warnings off: non-finite results are refused by value
        with decoding("the tensors do not describe the model", Invalid), np.errstate(all="ignore"):
            try:
                net = self.decode(model, tensors)
            except codec.TensorError as e:
                raise Invalid.at(["body", e.loc], e.msg) from None
        quantized = any(t.dtype != np.float32 for t in tensors.values())
        stored = {k: np.ascontiguousarray(t) for k, t in tensors.items()}
        return self.store(net=net, tensors=stored, encoding="quantized" if quantized else "dense")


def served_out(task: str, row: ServedMetrics | None) -> ServedOut:
    """A version's ``served`` block from its ``served_metrics`` row (None: nothing yet)."""
    if row is None:
        return ServedOut()
    n = row.labelled
    return ServedOut(
        predictions=row.predictions,
        labelled=n,
        loss=row.loss_sum / n if n else None,
        accuracy=row.correct / n if n and task != "regression" else None,
    )


def version_out(
    m: Model, v: Version, exports: list[dict[str, Any]] | None = None, served: ServedMetrics | None = None
) -> VersionOut:
    """The one mapping of a version row to its public answer."""
    return VersionOut(
        model=m.name,
        version=v.version,
        parent=v.parent,
        operation=v.operation,  # type: ignore[arg-type]
        params=v.params,
        metrics=v.metrics,
        sha256=v.blob_sha256,
        size_bytes=v.size_bytes,
        sparsity=v.sparsity,
        dtype=v.dtype,
        encoding=v.encoding,
        architecture=list(v.architecture),
        applied_through=v.applied_through,
        description=v.description or "",
        tags=dict(v.tags or {}),
        exports=exports or [],
        served=served_out(m.task, served),
        created_at=v.created_at,
    )

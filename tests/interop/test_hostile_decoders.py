"""The decoders of untrusted bytes (``read_header`` / ``decode_upload`` + the tensor mapping,
``from_onnx`` + ``verify_import``) answer every hostile file of
:mod:`tests.interop.hostile_files` with the 4xx problem naming what is wrong — never
another exception — and the boundary that guarantees it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from app.core.blobs import BlobStore
from app.core.errors import BadRequest, Invalid, PayloadTooLarge, StewardError, decoding
from app.interop.onnx_import import OnnxImportError, _Constants, from_onnx
from app.interop.safetensors import read_header
from app.registry.versions import NetworkCache, VersionService
from tests.interop.hostile_files import (
    MAP_ARGS,
    A,
    Hostile,
    assert_names_the_problem,
    dense_onnx,
    good_safetensors,
    import_onnx,
    import_safetensors,
    onnx_bases,
    onnx_cases,
    safetensors_cases,
    st_bytes,
)


@pytest.fixture
def versions(tmp_path):
    return VersionService(BlobStore(tmp_path / "blobs"), NetworkCache(), 1 << 24)


@pytest.mark.parametrize("case", safetensors_cases(), ids=lambda c: c.id)
def test_hostile_safetensors_is_a_problem_naming_it(versions, case: Hostile) -> None:
    with pytest.raises(StewardError) as info:
        import_safetensors(versions, case.data)
    assert_names_the_problem(info.value.body(), case)


@pytest.mark.parametrize("case", onnx_cases(), ids=lambda c: c.id)
def test_hostile_onnx_is_a_problem_naming_it(case: Hostile) -> None:
    with pytest.raises(StewardError) as info:
        import_onnx(case.data)
    assert_names_the_problem(info.value.body(), case)


def test_the_hostile_files_are_otherwise_valid(versions) -> None:
    """The mutation bases import, so each hostile file fails for its own reason."""
    for data in onnx_bases():
        assert import_onnx(data)["ok"] is True
    assert import_safetensors(versions, good_safetensors()).architecture == [4, 3, 1]


def test_read_header_refuses_duplicates_at_any_depth() -> None:
    with pytest.raises(BadRequest, match="'k' twice"):
        read_header(st_bytes(b'{"__metadata__":{"k":"a","k":"b"}}'), max_header=1024)


def test_a_long_identity_chain_is_evaluated_without_recursion() -> None:
    nodes = [helper.make_node("Identity", [f"w{i}"], [f"w{i + 1}"], name=f"id{i}") for i in range(5000)]
    nodes.append(helper.make_node("Identity", ["w5000"], ["W"], name="last"))
    data = dense_onnx(nodes, [A(np.ones((3, 4), np.float32), "w0")])
    assert import_onnx(data)["ok"] is True


def test_a_constant_expression_that_loops_is_refused() -> None:
    """``onnx.checker`` refuses unsorted graphs first; the evaluation does not rely on it."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["b"], ["a"], name="first"),
            helper.make_node("Identity", ["a"], ["b"], name="second"),
        ],
        "loop",
        [],
        [],
    )
    consts = _Constants(graph, 17, budget=1 << 20)
    for index, node in enumerate(graph.node):
        for out in node.output:
            consts.producers[out] = (index, node)
    with pytest.raises(OnnxImportError, match="depends on itself") as info:
        consts.get("a")
    assert info.value.node in ("first", "second")


def test_verification_runs_only_what_the_followed_tensor_needs() -> None:
    """Dead constants ONNX Runtime would refuse (a Concat of mismatched ranks) never reach it."""
    model = onnx.load_model_from_string(dense_onnx([], [A(np.ones((3, 4), np.float32), "W")]))
    model.graph.initializer.extend([A(np.ones((2, 2), np.float32), "k1"), A(np.ones(3, np.float32), "k2")])
    model.graph.node.insert(0, helper.make_node("Concat", ["k1", "k2"], ["dead"], name="dead", axis=0))
    data = model.SerializeToString()
    assert import_onnx(data)["ok"] is True


def test_boundary_turns_any_failure_into_a_problem() -> None:
    def fail(exc: BaseException, fallback=BadRequest) -> StewardError:
        with pytest.raises(StewardError) as info, decoding("decoding x", fallback):
            raise exc
        return info.value

    assert isinstance(fail(Invalid("precise")), Invalid)  # the decoder's own answer passes
    assert fail(Invalid("precise")).detail == "precise"
    assert isinstance(fail(RecursionError()), BadRequest)
    assert isinstance(fail(MemoryError()), PayloadTooLarge)
    err = fail(KeyError("perm"), Invalid)
    assert isinstance(err, Invalid) and err.detail == "decoding x: KeyError: 'perm'"
    with pytest.raises(KeyboardInterrupt), decoding("decoding x"):
        raise KeyboardInterrupt


def test_from_onnx_names_the_node_of_an_unexpected_failure(monkeypatch) -> None:
    """A failure no check foresaw is still a 422 naming the node the walk was at."""
    from app.interop import onnx_import

    def broken(*args, **kwargs):
        raise ZeroDivisionError("no check foresaw this")

    monkeypatch.setattr(onnx_import, "_broadcast_bias", broken)
    with pytest.raises(OnnxImportError, match="ZeroDivisionError: no check foresaw this") as info:
        from_onnx(dense_onnx([], [A(np.ones((3, 4), np.float32), "W")]), max_bytes=1 << 20)
    assert (info.value.status, info.value.op_type, info.value.node) == (422, "Gemm", "g0")


def test_onnx_errors_are_problems_with_their_status() -> None:
    with pytest.raises(StewardError) as info:
        from_onnx(b"\x08\x07garbage", max_bytes=1 << 20)
    assert info.value.status == 400
    with pytest.raises(StewardError) as info:
        from_onnx(b"\x00" * 100, max_bytes=10)
    assert info.value.status == 413
    with pytest.raises(StewardError) as info:
        from_onnx(dense_onnx([], [A(np.ones((3, 5), np.float32), "W")]), max_bytes=1 << 20).check_against(**MAP_ARGS)
    assert info.value.status == 422
    assert isinstance(info.value, ValueError)  # still a ValueError for older callers

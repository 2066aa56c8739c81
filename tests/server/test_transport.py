"""Compact task-vector transport: exact round trips, sparse vs dense choice, malformed payloads."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from atmflow.transport import TransportError, decode, encode, index_dtype


def vector() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    sparse = torch.zeros(40, 30)
    sparse.view(-1)[torch.randperm(1200, generator=gen)[:100]] = torch.randn(100, generator=gen)
    return {"dense": torch.randn(5, 7, generator=gen), "sparse": sparse, "frozen": torch.zeros(3, 3, 3),
            "big": torch.zeros(70_000).index_fill_(0, torch.tensor([0, 69_999]), 2.5)}


def through_flower(wire: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return ArrayRecord(wire).to_torch_state_dict()  # what the server gets out of the message


def test_float32_round_trip_is_exact_and_sparse_tensors_travel_as_indices_plus_values() -> None:
    tau = vector()
    wire, spec = encode(tau)
    assert set(wire) == {"dense", "sparse.indices", "sparse.values", "frozen.indices", "frozen.values",
                         "big.indices", "big.values"}
    assert wire["sparse.indices"].dtype == torch.int16 and wire["big.indices"].dtype == torch.int32
    assert wire["frozen.values"].numel() == 0
    out = decode(through_flower(wire), spec)
    assert set(out) == set(tau)
    for k in tau:
        assert out[k].dtype == tau[k].dtype and torch.equal(out[k], tau[k]), k


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_decodes_to_the_rounded_values(dtype: str) -> None:
    tau = vector()
    wire, spec = encode(tau, dtype)
    out = decode(through_flower(wire), spec)
    half = getattr(torch, dtype)
    for k in tau:
        assert out[k].dtype == torch.float32
        assert torch.equal(out[k], tau[k].to(half).to(torch.float32)), k
    assert not torch.equal(out["dense"], tau["dense"])  # it really was rounded
    assert wire["dense"].element_size() == 2


def test_float64_round_trip_is_bit_exact_and_float32_transport_rounds_it() -> None:
    gen = torch.Generator().manual_seed(1)
    sparse = torch.zeros(300, dtype=torch.float64)
    sparse[::37] = torch.randn(9, generator=gen, dtype=torch.float64) * 1e-9  # below float32's resolution
    tau = {"dense": torch.randn(4, 4, generator=gen, dtype=torch.float64) + 1e-12, "sparse": sparse}
    wire, spec = encode(tau)  # the default: exact
    assert wire["dense"].dtype == torch.float64 and wire["sparse.values"].dtype == torch.float64
    out = decode(through_flower(wire), spec)
    for k in tau:
        assert out[k].dtype == torch.float64 and torch.equal(out[k], tau[k]), k
    rounded = decode(*encode(tau, "float32"))
    assert torch.equal(rounded["dense"], tau["dense"].float().double())
    assert not torch.equal(rounded["dense"], tau["dense"])  # float32 transport of a float64 vector rounds


def test_index_dtype_is_the_smallest_that_fits() -> None:
    assert [index_dtype(n) for n in (1, 256, 257, 32_768, 32_769, 2**31, 2**31 + 1)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32, torch.int32, torch.int64]


def test_malformed_payloads_are_named() -> None:
    wire, spec = encode(vector())
    with pytest.raises(TransportError, match="missing"):
        decode({k: v for k, v in wire.items() if k != "dense"}, spec)
    bad = dict(wire, **{"sparse.indices": wire["sparse.indices"].flip(0)})
    with pytest.raises(TransportError, match="strictly increasing"):
        decode(bad, spec)
    with pytest.raises(TransportError, match="unreadable"):
        decode(wire, "{not json")
    assert decode({"w": torch.ones(2)}, None)["w"].tolist() == [1.0, 1.0]  # no spec: plain dense arrays

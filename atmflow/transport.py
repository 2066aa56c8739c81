"""Compact transport of task vectors: what a client sends, and exactly what the server decodes.

A task vector ``{name: tensor}`` is encoded tensor by tensor, its values in the transport dtype
(``transport-dtype``): ``exact`` (the default: each tensor in its own dtype, float32 or float64, so
the server gets back exactly the bits the client computed), or ``float32``, ``bfloat16`` or
``float16`` (each entry rounded once to that type; ``float32`` only rounds float64 vectors, e.g. a
``precision = "float64"`` run, and halves their bytes):

* **sparse**: the flat positions of the non-zero entries (ascending, in the smallest integer type
  that indexes the tensor: uint8, int16, int32 or int64) plus their values, sent as
  ``<name>.indices`` and ``<name>.values``. Chosen whenever it is smaller than the dense form, i.e.
  ``nnz * (index bytes + value bytes) < numel * value bytes``: TaLoS task vectors (paper 004, where
  90% of the entries are exactly zero) and tensors TaLoS froze entirely (nnz = 0) travel this way;
* **dense**: the whole tensor under its own name.

A spec (one JSON string in the reply's ``transport`` config record) gives each tensor's form, shape
and original dtype. Decoding is exact: the server gets back the sent values, converted to the
original dtype (with ``exact`` transport, the vector itself, float64 included: paper 000's Theorem
3.1 check relies on it; with a narrower dtype, each entry rounded once to that type). Flower's
arrays are NumPy arrays, which have no bfloat16: bfloat16 values travel as their raw 16 bits
(int16) and are reinterpreted on decoding.
Nothing in a received spec is trusted: the server passes the shapes it expects, and the spec must
announce exactly those tensors with those shapes before anything is allocated (a spec claiming a
sparse tensor of shape [2**40] is refused, not allocated); every shape entry must be an integer >= 0.
Pure functions, used by the client (:mod:`atmflow.client.app`) and the server
(:mod:`atmflow.rounds.exchange`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

EXACT = "exact"  # each tensor's values in its own dtype (SOURCE_DTYPES)
ROUNDED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRANSPORT_DTYPES = (EXACT, *ROUNDED_DTYPES)
SOURCE_DTYPES = {"float32": torch.float32, "float64": torch.float64}
INDEX_DTYPES = ((2**8, torch.uint8), (2**15, torch.int16), (2**31, torch.int32), (2**63, torch.int64))


class TransportError(ValueError):
    """A received task vector that does not decode (names the tensor and what is wrong)."""


def index_dtype(numel: int) -> torch.dtype:
    """The smallest integer type whose range holds every flat position ``0 .. numel - 1``."""
    return next(dtype for limit, dtype in INDEX_DTYPES if numel <= limit)


def value_dtype(dtype: str, source: torch.dtype) -> torch.dtype:
    """The dtype a tensor's values travel in: its own (``exact``) or the rounded transport dtype."""
    return source if dtype == EXACT else ROUNDED_DTYPES[dtype]


def _to_wire(values: torch.Tensor, dtype: str) -> torch.Tensor:
    wire = values.to(value_dtype(dtype, values.dtype))
    return wire.view(torch.int16) if dtype == "bfloat16" else wire


def _from_wire(wire: torch.Tensor, dtype: str) -> torch.Tensor:
    return wire.view(torch.bfloat16) if dtype == "bfloat16" else wire


def encode(tau: Mapping[str, torch.Tensor], dtype: str = EXACT) -> tuple[dict[str, torch.Tensor], str]:
    """``(wire tensors, spec)`` of a task vector; :func:`decode` inverts it exactly (up to the dtype rounding)."""
    if dtype not in TRANSPORT_DTYPES:
        raise ValueError(f"transport-dtype must be one of {list(TRANSPORT_DTYPES)}, got {dtype!r}")
    wire: dict[str, torch.Tensor] = {}
    spec: dict[str, Any] = {"dtype": dtype, "tensors": {}}
    for name, tensor in tau.items():
        source = str(tensor.dtype).removeprefix("torch.")
        if source not in SOURCE_DTYPES:
            raise ValueError(f"tensor {name!r} is {tensor.dtype}; task vectors are float32 or float64")
        value_bytes = value_dtype(dtype, tensor.dtype).itemsize
        flat = _to_wire(tensor.detach().cpu().reshape(-1), dtype)
        nonzero = torch.nonzero(_from_wire(flat, dtype) != 0).reshape(-1)
        idx_type = index_dtype(flat.numel())
        sparse = len(nonzero) * (idx_type.itemsize + value_bytes) < flat.numel() * value_bytes
        spec["tensors"][name] = {"form": "sparse" if sparse else "dense", "shape": list(tensor.shape),
                                 "source": source}
        if sparse:
            wire[f"{name}.indices"] = nonzero.to(idx_type)
            wire[f"{name}.values"] = flat[nonzero].contiguous()
        else:
            wire[name] = flat.contiguous()
    return wire, json.dumps(spec)


def _spec_shape(name: str, entry: Any) -> tuple[int, ...]:
    """A spec entry's shape: a list of integers >= 0 (else :class:`TransportError`)."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if (not isinstance(shape, list) or entry.get("form") not in ("sparse", "dense")
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise TransportError(f"tensor {name!r}: spec entry {str(entry)[:200]} is not "
                             "{form: sparse|dense, shape: [int >= 0, ...], source: ...}")
    return tuple(shape)


def check_spec_shapes(tensors: Any, expected: Mapping[str, tuple[int, ...]] | None) -> None:
    """The spec's tensors are well formed and, with ``expected``, exactly the expected names and shapes."""
    if not isinstance(tensors, dict):
        raise TransportError("transport spec: 'tensors' is not a mapping")
    shapes = {name: _spec_shape(name, entry) for name, entry in tensors.items()}
    if expected is None:
        return
    if set(shapes) != set(expected):
        extra, missing = sorted(set(shapes) - set(expected))[:3], sorted(set(expected) - set(shapes))[:3]
        raise TransportError(f"transport spec announces other tensors than the model's (unexpected {extra}, "
                             f"missing {missing})")
    for name, shape in shapes.items():
        if shape != tuple(expected[name]):
            raise TransportError(f"tensor {name!r}: spec shape {list(shape)[:8]} differs from the model's "
                                 f"{list(expected[name])}")


def decode(wire: Mapping[str, torch.Tensor], spec: str | None,
           expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """The task vector a client sent. ``spec=None``: the arrays are a plain dense task vector.

    ``expected`` (``{name: shape}``): the tensors the spec must announce, checked before allocating.
    """
    if spec is None:
        return dict(wire)
    try:
        parsed = json.loads(spec)
        dtype, tensors = parsed["dtype"], parsed["tensors"]
    except (ValueError, KeyError, TypeError) as err:
        raise TransportError(f"unreadable transport spec ({err})") from None
    if dtype not in TRANSPORT_DTYPES:
        raise TransportError(f"unknown transport dtype {dtype!r}")
    check_spec_shapes(tensors, expected)
    expected_names = {f"{n}.{part}" if t.get("form") == "sparse" else n
                      for n, t in tensors.items() for part in ("indices", "values")}
    if set(wire) != expected_names:
        extra, missing = sorted(set(wire) - expected_names)[:3], sorted(expected_names - set(wire))[:3]
        raise TransportError(f"arrays do not match the transport spec (unexpected {extra}, missing {missing})")
    return {name: _decode_tensor(name, entry, wire, dtype) for name, entry in tensors.items()}


def _decode_tensor(name: str, entry: Mapping[str, Any], wire: Mapping[str, torch.Tensor],
                   dtype: str) -> torch.Tensor:
    source = SOURCE_DTYPES.get(entry.get("source", ""))
    if source is None:
        raise TransportError(f"tensor {name!r}: unknown source dtype {entry.get('source')!r}")
    shape = tuple(int(s) for s in entry["shape"])
    numel = int(torch.Size(shape).numel())
    wire_dtype = torch.int16 if dtype == "bfloat16" else value_dtype(dtype, source)
    if entry["form"] == "dense":
        values = wire[name]
        if values.dtype != wire_dtype or values.numel() != numel:
            raise TransportError(f"tensor {name!r}: dense payload is {values.dtype} x {values.numel()}, "
                                 f"expected {wire_dtype} x {numel}")
        return _from_wire(values, dtype).to(source).reshape(shape)
    indices, values = wire[f"{name}.indices"], wire[f"{name}.values"]
    if values.dtype != wire_dtype or indices.dtype != index_dtype(numel) or indices.shape != values.shape:
        raise TransportError(f"tensor {name!r}: sparse payload has {indices.dtype} indices and {values.dtype} "
                             f"values of lengths {indices.numel()} / {values.numel()}")
    positions = indices.long()
    if len(positions) and (positions.min() < 0 or positions.max() >= numel or (positions.diff() <= 0).any()):
        raise TransportError(f"tensor {name!r}: sparse indices out of range or not strictly increasing")
    out = torch.zeros(numel, dtype=source)
    out[positions] = _from_wire(values, dtype).to(source)
    return out.reshape(shape)

"""msgpack encoding of everything Hutch stores, with the size and type rules of the SDK."""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Any

import msgpack
from hutch.blobs import BLOB_EXT, BlobRef
from hutch.errors import NotSerializable, PayloadTooLarge
from pydantic import BaseModel

INTEGER_RANGE = "integers must be between -2**63 and 2**64 - 1 (pass bigger ones as strings)"
"""msgpack's integer range, as a sentence for error messages."""


class _IntegerOutOfRange(OverflowError):
    """An int msgpack cannot hold; said as such, since "type int is not serializable" reads as a contradiction."""

    def __init__(self, value: int) -> None:
        shown = str(value) if value.bit_length() <= 256 else f"of {value.bit_length()} bits"
        size = "too large" if value > 0 else "too large in magnitude"
        super().__init__(f"the integer {shown} is {size}; {INTEGER_RANGE}")


def _default(value: object) -> object:
    if isinstance(value, BlobRef):  # a large value's reference, in a record the engine writes
        return msgpack.ExtType(BLOB_EXT, value.ext_data())
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, MappingProxyType):
        # The read-only view of params run() gets (event.payload); returning it must just work.
        return dict(value)
    if isinstance(value, int):  # msgpack hands over the ints outside its 64-bit range
        raise _IntegerOutOfRange(value)
    raise TypeError(f"type {type(value).__name__} is not serializable")


_packer_kwargs: dict[str, Any] = {"use_bin_type": True, "default": _default}


_local = threading.local()


def _packer() -> msgpack.Packer:
    # One packer per thread, reused: msgpack.packb builds a Packer (and its buffer) on every call,
    # which doubles the cost of the few small records each step writes.
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(**_packer_kwargs)
    return packer


def pack(value: Any) -> bytes:
    """Encode a value already known to be serializable (internal records)."""
    return _packer().pack(value)  # type: ignore[no-any-return]


def _ext(code: int, data: bytes) -> object:
    if code == BLOB_EXT:
        return BlobRef.from_ext(data)
    return msgpack.ExtType(code, data)


def _no_ext(code: int, data: bytes) -> object:
    # A user value holding msgpack.ExtType (which msgpack packs as is) could pass for a reference.
    raise TypeError(f"msgpack extension types (here code {code}) are not serializable")


def unpack(data: bytes) -> Any:
    """Decode bytes written by :func:`pack` (a large value's reference decodes as a :class:`BlobRef`)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)


MAX_PARAMS_DEPTH = 64
"""How deeply params may nest (lists and dicts); the gateway enforces the same bound."""


def check_depth(value: Any, *, what: str, limit: int = MAX_PARAMS_DEPTH) -> None:
    """Raise :class:`NotSerializable` if lists/dicts nest deeper than ``limit`` (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > limit:
                raise NotSerializable(f"{what} nests deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def encode_value(value: Any, *, what: str, limit: int) -> tuple[bytes, Any]:
    """Encode a user value and give back what replay will see.

    Returns the bytes and the decoded value, so the live path hands ``run()`` exactly what a
    replay from storage would (tuples become lists, pydantic models become dicts).

    Raises:
        NotSerializable: the value (or something inside it) is not msgpack-serializable, or a
            dict has a non-string key. The message names ``what`` and the offending type.
        PayloadTooLarge: the encoding is larger than ``limit`` bytes.
    """
    try:
        data: bytes = _packer().pack(value)
        # bytes and str decode as themselves: a large one is not decoded again to learn that.
        exact = type(value) is bytes or type(value) is str
        decoded = value if exact else msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except _IntegerOutOfRange as exc:
        raise NotSerializable(f"{what} is not serializable: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(
            f"{what} is not serializable: {exc}; return None, bool, int, float, str, bytes, "
            "lists, dicts with str keys, or a pydantic model"
        ) from None
    if len(data) > limit:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes encoded; the limit is {limit} bytes")
    return data, decoded

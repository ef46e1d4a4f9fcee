"""Large values by reference (claim check): the reference format and the blob store seam.

A value whose encoding is larger than ``Limits.inline_threshold`` is stored once in a
:class:`BlobStore`, and the history holds a :class:`BlobRef` in its place — a msgpack
extension value (code :data:`BLOB_EXT`) carrying a random key and the size of the bytes. The
blob is written before the transition that records the reference commits: an orphan blob (the
commit failed) is harmless, a reference to nothing is not. Blobs are addressed by the instance
(:class:`BlobAddress`) and the key. The key is drawn, not a content hash: hashing megabytes
costs more than writing them, and a fresh key per write means two runs of one attempt (a
superseded owner's and the new one's) never overwrite the blob the committed one refers to.

Stores: Redis (the default, :class:`hutch.store.redis.RedisBlobs`: one hash per instance under
the instance's hash tag, expiring with it), a filesystem directory
(:mod:`hutch.blobs_file`) and an S3-compatible object store (:mod:`hutch.blobs_s3`), chosen by
the ``blob_store`` setting (:func:`open_blob_store`).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hutch.errors import BlobNotFound, InvalidInputError

BLOB_EXT = 1
"""The msgpack extension type code of a :class:`BlobRef`."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where a large value went: its key in the blob store (32 hex digits) and its msgpack bytes' size."""

    key: str
    size: int

    def ext_data(self) -> bytes:
        """The extension payload: 16 key bytes, then the size (8 bytes, big-endian)."""
        return bytes.fromhex(self.key) + self.size.to_bytes(8, "big")

    @classmethod
    def from_ext(cls, data: bytes) -> BlobRef:
        """The reference an extension payload written by :meth:`ext_data` holds."""
        return cls(data[:_KEY_BYTES].hex(), int.from_bytes(data[_KEY_BYTES:], "big"))

    def packed(self) -> bytes:
        """The reference's msgpack bytes (what ``pack(ref)`` writes)."""
        return _REF_HEAD + self.ext_data()

    @classmethod
    def new(cls, data: bytes) -> BlobRef:
        """A fresh reference for these bytes (a random key: no two writes share one)."""
        return cls(os.urandom(_KEY_BYTES).hex(), len(data))


_KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class BlobAddress:
    """The instance a blob belongs to (its partition places a Redis blob in the instance's slot)."""

    partition: int
    workflow: str
    instance_id: str


class BlobsNeeded(Exception):
    """Replay reached recorded values stored by reference that it was not given: fetch them and replay again."""

    def __init__(self, refs: Sequence[BlobRef]) -> None:
        super().__init__(f"{len(refs)} stored values needed")
        self.refs = list(refs)


class BlobStore(Protocol):
    """Where values over the inline threshold live."""

    async def put(self, where: BlobAddress, ref: BlobRef, data: bytes) -> None:
        """Store ``data`` (whose reference is ``ref``) for the instance; storing it again is harmless."""
        ...

    async def get_many(self, where: BlobAddress, refs: Sequence[BlobRef]) -> list[bytes | None]:
        """The bytes of each reference (None where the store has none)."""
        ...

    async def close(self) -> None:
        """Release the store's connections."""
        ...


async def fetch_blobs(store: BlobStore, where: BlobAddress, refs: Sequence[BlobRef]) -> dict[str, bytes]:
    """The bytes of ``refs`` by key, each checked against its reference's size.

    Raises:
        BlobNotFound: a blob is missing, or its size is not the one the reference names.
    """
    out: dict[str, bytes] = {}
    for ref, data in zip(refs, await store.get_many(where, refs), strict=True):
        if data is None or len(data) != ref.size:
            raise BlobNotFound(
                f"instance {where.instance_id!r} of workflow {where.workflow!r}: the value {ref.key[:12]} "
                f"({ref.size} bytes) its history refers to is not in the blob store; give every process "
                "of the deployment the same blob_store setting"
            )
        out[ref.key] = data
    return out


def check_blob_store_url(url: str) -> str:
    """The ``blob_store`` setting, if it names a store :func:`open_blob_store` opens.

    Raises:
        InvalidInputError: naming the value and the accepted forms.
    """
    parts = urllib.parse.urlsplit(url)
    ok = (
        url in ("redis", "redis://")
        or (parts.scheme == "file" and bool(parts.path))
        or (parts.scheme == "s3" and bool(parts.netloc))
    )
    if not ok:
        raise InvalidInputError(
            f"blob_store: {url!r} is not a blob store: use redis (the default), file:///path/to/dir "
            "or s3://bucket/prefix[?endpoint=http://host:9000&region=...]"
        )
    return url


def open_blob_store(url: str) -> BlobStore | None:
    """The blob store the ``blob_store`` setting names; None for ``redis`` (the checkpoint store's Redis).

    ``file:///dir`` keeps blobs under a directory; ``s3://bucket/prefix`` in an S3-compatible store
    (query parameters ``endpoint``, ``region``; credentials from the usual ``AWS_*`` variables),
    which needs the ``hutch[s3]`` extra.

    Raises:
        InvalidInputError: the URL is none of these.
    """
    parts = urllib.parse.urlsplit(check_blob_store_url(url))
    if parts.scheme == "file":
        from hutch.blobs_file import FileBlobs

        return FileBlobs(urllib.parse.unquote(parts.path))
    if parts.scheme == "s3":
        from hutch.blobs_s3 import S3Blobs

        query = dict(urllib.parse.parse_qsl(parts.query))
        return S3Blobs(parts.netloc, parts.path.strip("/"), endpoint=query.get("endpoint"), region=query.get("region"))
    return None


_REF_HEAD = b"\xc7" + bytes([_KEY_BYTES + 8, BLOB_EXT])  # msgpack "ext 8" of 24 bytes, type BLOB_EXT
_REF_LENGTH = len(_REF_HEAD) + _KEY_BYTES + 8


async def by_reference(store: BlobStore | None, where: BlobAddress, data: bytes, threshold: int) -> bytes:
    """The msgpack bytes to record for a value: ``data`` itself, or its reference once ``data`` is stored.

    ``data`` itself up to ``threshold`` bytes (or without a store), else the bytes of its reference.

    Call it before the transition that records the result commits.
    """
    if store is None or len(data) <= threshold:
        return data
    ref = BlobRef.new(data)
    await store.put(where, ref, data)
    return ref.packed()


def large_ref(data: bytes, threshold: int) -> BlobRef | None:
    """A fresh reference for ``data`` if it is over ``threshold`` bytes (store it first), else None: it stays inline.

    The rule for values recorded outside a commit's own blobs (params, written at create): one
    length check for a small value.
    """
    return BlobRef.new(data) if len(data) > threshold else None


def stored_ref(data: bytes) -> BlobRef | None:
    """The reference that msgpack bytes of a value consist of, or None for a value stored inline.

    Looks at the bytes' head only: an inline value is not decoded to find out.
    """
    if len(data) == _REF_LENGTH and data.startswith(_REF_HEAD):
        return BlobRef.from_ext(data[len(_REF_HEAD) :])
    return None


def record_ref(record: Mapping[str, Any]) -> BlobRef | None:
    """The reference a history record holds in place of its value (a step's result, an event's payload), if any."""
    if "vb" in record and "v" not in record:  # "v": the live path's decoded value, never stored
        return stored_ref(record["vb"])
    payload = record["ev"].get("payload") if "ev" in record else None
    return payload if isinstance(payload, BlobRef) else None


def refs_in(records: Iterable[Mapping[str, Any]]) -> list[BlobRef]:
    """Every reference the records hold, once each, in order."""
    found = {ref.key: ref for ref in map(record_ref, records) if ref is not None}
    return list(found.values())

"""A blob store in an S3-compatible object store (``blob_store = "s3://bucket/prefix"``), through obstore.

obstore (the Rust ``object_store`` crate's Python binding) is async-native and small; it comes
with the ``hutch[s3]`` extra. Credentials and the region come from the usual ``AWS_*``
environment variables unless the URL's query gives ``region``; ``endpoint`` points it at
MinIO, Ceph, R2 or another S3-compatible server (plain ``http://`` endpoints are allowed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hutch.blobs import BlobAddress, BlobRef
from hutch.errors import InvalidInputError

if TYPE_CHECKING:
    from obstore.store import ClientConfig


class S3Blobs:
    """Blobs as objects ``<prefix>/<workflow>/<instance id>/<key>`` in one bucket.

    Nothing here prunes them when an instance's retention ends: give the bucket (or the prefix)
    a lifecycle rule that expires objects after the deployment's retention plus its longest run.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None, region: str | None = None):
        try:
            from obstore.store import S3Store
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise InvalidInputError("blob_store s3://... needs obstore: pip install 'hutch[s3]'") from None
        options: dict[str, Any] = {}
        if endpoint:
            options["endpoint"] = endpoint
        if region:
            options["region"] = region
        client: ClientConfig | None = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
        self._store = S3Store(bucket, prefix=prefix or None, client_options=client, **options)

    @staticmethod
    def _path(where: BlobAddress, ref: BlobRef) -> str:
        return f"{where.workflow}/{where.instance_id}/{ref.key}"

    async def put(self, where: BlobAddress, ref: BlobRef, data: bytes) -> None:
        """Upload the blob (a multipart upload for a large one, as obstore decides)."""
        import obstore

        await obstore.put_async(self._store, self._path(where, ref), data)

    async def get_many(self, where: BlobAddress, refs: Sequence[BlobRef]) -> list[bytes | None]:
        """Download the blobs concurrently (None for a missing one)."""
        return list(await asyncio.gather(*(self._get(self._path(where, ref)) for ref in refs)))

    async def _get(self, path: str) -> bytes | None:
        import obstore

        try:
            result = await obstore.get_async(self._store, path)
        except FileNotFoundError:
            return None
        return bytes(await result.bytes_async())

    async def close(self) -> None:
        """Do nothing: obstore holds no connection that needs closing."""

"""A blob store in a filesystem directory (``blob_store = "file:///dir"``), e.g. a volume every worker mounts."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hutch.blobs import BlobAddress, BlobRef


class FileBlobs:
    """Blobs as files ``<root>/<workflow>/<instance id>/<key>``, written whole or not at all.

    Nothing prunes them when an instance's retention ends: remove old instance folders with the
    deployment's own tooling (e.g. ``find <root> -mindepth 2 -maxdepth 2 -mtime +30``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, where: BlobAddress, ref: BlobRef) -> Path:
        return self.root / where.workflow / where.instance_id / ref.key

    async def put(self, where: BlobAddress, ref: BlobRef, data: bytes) -> None:
        """Write the blob (in a thread: a large write must not stall the event loop)."""
        await asyncio.to_thread(self._write, self._path(where, ref), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place once complete, so a reader never sees half a blob.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get_many(self, where: BlobAddress, refs: Sequence[BlobRef]) -> list[bytes | None]:
        """Read the blobs (None for a missing one)."""
        paths = [self._path(where, ref) for ref in refs]
        return await asyncio.to_thread(lambda: [_read(p) for p in paths])

    async def close(self) -> None:
        """Nothing to release."""


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None

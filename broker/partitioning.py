"""Which partition an instance belongs to: a stable hash of (workflow, instance id)."""

from __future__ import annotations

import hashlib


def partition_of(workflow: str, instance_id: str, partitions: int) -> int:
    """The partition of an instance; the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{workflow}:{instance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions

"""The storage term of the model (engine/CYCLE_MODEL.md, "Storage"): what a token reads
from storage as `invoke bench --storage` measured it (duo_builder.bench.storage, in the
64 MB QEMU guest), priced at the SD card's speed."""

from __future__ import annotations

from duo_builder.bench.riscv.cycles import storage_seconds
from duo_builder.bench.storage import StorageReads, load_measured


def seconds(reads: StorageReads) -> float:
    """Storage time of a token: its bytes at the SD card's speed, one fixed cost per read
    request the disk served (major faults' reads are among them)."""
    return storage_seconds(reads.read_bytes_per_token, reads.reads_per_token)


__all__ = ["StorageReads", "load_measured", "seconds"]

"""Convert a llama2.c checkpoint between on-disk formats."""

from collections.abc import Callable
from pathlib import Path

from duo_builder.model.checkpoint import Checkpoint, read_checkpoint, write_q80, write_v0, write_v1
from duo_builder.model.packed import write_packed

Writer = Callable[[Checkpoint, Path], Path]

# Output format name -> writer. New formats only need an entry here.
# fp32/q8/q4/faithful: the engine's packed format (engine/FORMAT.md); the others are llama2.c's.
WRITERS: dict[str, Writer] = {
    "fp32": lambda c, d: write_packed(c, d, "fp32"),
    "q8": lambda c, d: write_packed(c, d, "q8"),
    "q4": lambda c, d: write_packed(c, d, "q4"),
    "faithful": lambda c, d: write_packed(c, d, "faithful"),
    "q80": write_q80,
    "v1": write_v1,
    "v0": write_v0,
}


def convert(src: Path | str, dst: Path | str, fmt: str) -> Path:
    """Read `src` (any supported format) and write it to `dst` as `fmt`; return `dst`."""
    writer = WRITERS.get(fmt)
    if writer is None:
        allowed = ", ".join(sorted(WRITERS))
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of: {allowed}")
    return writer(read_checkpoint(src), Path(dst))

"""Running the engine binaries from tests: one process per case, two at a time."""

import json
import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from duo_builder.paths import SHARED

GOLDENS = SHARED / "reference" / "goldens.jsonl"
# Sanitizer reports get their own exit codes, so a clean error (exit 1) is told apart
SANITIZER_ENV = {
    "ASAN_OPTIONS": "exitcode=86:detect_leaks=1",
    "UBSAN_OPTIONS": "halt_on_error=1:exitcode=87:print_stacktrace=1",
}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: str


def run(
    binary: Path, args: Sequence[str | bytes], timeout: float = 300, prefix: Sequence[str] = ()
) -> Result:
    """Run `binary` with `args`; `prefix` runs it through another program (a QEMU command
    from duo_builder.build.engine.runner for a riscv64 build)."""
    env = {**os.environ, **SANITIZER_ENV}
    cmd = [*prefix, str(binary), *args]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)
    return Result(p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"))


def run_many(
    binary: Path, cases: Sequence[Sequence[str | bytes]], prefix: Sequence[str] = ()
) -> list[Result]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda a: run(binary, a, prefix=prefix), cases))


def load_goldens() -> list[dict]:
    with open(GOLDENS) as f:
        return [json.loads(line) for line in f]


def first_difference(a: str, b: str) -> int | None:
    """Index of the first differing character, or None when equal."""
    if a == b:
        return None
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )

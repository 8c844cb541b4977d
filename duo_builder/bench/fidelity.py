"""`invoke bench --fidelity`: how far each fast format's stories are from the fp32 reference.

For stories260K (real weights) and synth15m (random weights, stories15M's shape), each
format is run by build/host/fidelity (engine/tools/fidelity.c) against the fp32 file
under `-k ref`, over the same seeds: where the freely generated story first departs
(in tokens after the prompt), how many stories are identical, and, with the model fed the
reference's tokens (teacher forcing), top-1 agreement and KL(ref || format) of the
next-token distributions.
"""

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from duo_builder.build import engine
from duo_builder.errors import BuildError, run
from duo_builder.paths import LLAMA_TOKENIZER, MODELS

SUMMARY = re.compile(
    r"summary: seeds (\d+) identical (\d+) mean_departure ([0-9.]+) top1 ([0-9.]+) "
    r"mean_kl ([0-9.eE+-]+)"
)
FORMATS = ("fp32", "q80", "q8", "q4")  # fp32: packed, its default (fused) path


class FidelityError(BuildError):
    """A fidelity run failed; the message says which."""


@dataclass(frozen=True)
class Agreement:
    model: str
    fmt: str
    seeds: int
    identical: int
    mean_departure: float
    top1: float
    mean_kl: float


def measure(
    binary: Path, ref: Path, other: Path, tokenizer: Path, seeds: int, steps: int
) -> tuple[int, int, float, float, float]:
    cmd = [str(binary), str(ref), str(other), str(tokenizer), "-c", str(seeds), "-n", str(steps)]
    p = run(cmd, what=f"fidelity of {other.name} against {ref.name}", error=FidelityError)
    m = SUMMARY.search(p.stdout)
    if not m:
        raise FidelityError(f"{' '.join(cmd)}: no summary line: {p.stdout[-300:]}")
    return (int(m[1]), int(m[2]), float(m[3]), float(m[4]), float(m[5]))


def main(seeds: int = 20, steps: int = 256) -> list[Agreement]:
    from duo_builder.bench.contest import converted, default_model

    if seeds < 1 or steps < 2:
        raise FidelityError("--seeds must be >= 1 and steps >= 2")
    binary = _fidelity_binary()
    synth = default_model()
    cases = [
        ("stories260K", MODELS / "stories260K.bin", MODELS / "tok512.bin", synth.parent),
        ("synth15m", synth, LLAMA_TOKENIZER, synth.parent),
    ]
    jobs = []
    for name, fp32, tok, where in cases:
        for fmt in FORMATS:
            jobs.append((name, fmt, fp32, converted(fp32, fmt, where), tok))
    print(f"fidelity: {seeds} seeds x {steps} steps per format, against -k ref ({binary})")

    def one(job: tuple[str, str, Path, Path, Path]) -> Agreement:
        name, fmt, fp32, other, tok = job
        r = Agreement(name, fmt, *measure(binary, fp32, other, tok, seeds, steps))
        print(f"  done: {name} {fmt}", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(one, jobs))
    labels = {"fp32": "packed fp32 (fast)", "q80": "Q8_0 (v2)", "q8": "packed q8",
              "q4": "packed q4"}  # fmt: skip
    print(
        f"{'model':<13}{'format':<20}{'identical':>10}{'departs at':>12}{'top-1':>8}{'mean KL':>11}"
    )
    for r in results:
        print(
            f"{r.model:<13}{labels[r.fmt]:<20}{f'{r.identical}/{r.seeds}':>10}"
            f"{r.mean_departure:>12.1f}{r.top1:>8.4f}{r.mean_kl:>11.2e}"
        )
    print("departs at: mean tokens after the prompt before the first different token "
          "(a story identical to the end counts its length)")  # fmt: skip
    return results


def _fidelity_binary() -> Path:
    engine.build("host")
    return engine.binary("host", "fidelity")

"""`invoke bench --faithful`: the faithful path (-k faithful) against -k ref and -k fast.

All three read the same faithful file (engine/FORMAT.md: fp32 sections plus the int8
classifier), so they differ only in how they compute. The contest protocol gives tok/s,
peak RSS (GNU time) and the story; the faithful sampler's counters (LLAMA2_FAITHFUL_STATS=2:
steps decided by the bounds alone, rows recomputed per step, bytes streamed per token) come
from the contest run and from a sweep of seeds, so their tails mean something.
"""

import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from duo_builder.bench.contest import (
    CONTEST_ARGS,
    BenchError,
    converted,
    prepare,
    timed_run,
)

STATS_RE = re.compile(
    r"faithful: steps (\d+), by bounds alone ([0-9.]+), without full fallback ([0-9.]+), "
    r".*bytes per token ([0-9.]+)"
)
ROWS_RE = re.compile(r"faithful rows per step:([ 0-9]*)")
SWEEP_SEEDS = range(1, 21)
PATHS = {"-k ref": ["-k", "ref"], "-k fast": ["-k", "fast"], "-k faithful": ["-k", "faithful"]}


@dataclass
class Sampled:
    """The faithful sampler's counters over some runs."""

    steps: int = 0
    by_bounds: float = 0.0  # steps, summed
    without_full: float = 0.0
    bytes: float = 0.0  # bytes per token x steps, summed
    rows: list[int] = field(default_factory=list)

    def add(self, stderr: str) -> None:
        m, r = STATS_RE.search(stderr), ROWS_RE.search(stderr)
        if not m or not r:
            raise BenchError(f"no faithful counters in: {stderr.strip()[-300:]}")
        steps = int(m.group(1))
        self.steps += steps
        self.by_bounds += float(m.group(2)) * steps
        self.without_full += float(m.group(3)) * steps
        self.bytes += float(m.group(4)) * steps
        self.rows += [int(v) for v in r.group(1).split()]

    def line(self, label: str) -> str:
        if not self.steps:
            return f"  {label}: no sampled steps"
        rows = sorted(self.rows)
        p99 = rows[max(0, -(-len(rows) * 99 // 100) - 1)]
        return (
            f"  {label}: {self.steps} steps; decided by the bounds alone "
            f"{self.by_bounds / self.steps:.1%}, without every logit exact "
            f"{self.without_full / self.steps:.2%}; rows recomputed per step mean "
            f"{statistics.mean(rows):.0f}, p99 {p99}, max {rows[-1]}; "
            f"{self.bytes / self.steps / 2**20:.2f} MiB streamed per token"
        )


def run(binary: Path, args: list[str], stats: bool) -> tuple[float, int, str, str]:
    """One run under GNU time: (tok/s, peak RSS kB, story, stderr)."""
    env = {**os.environ, "LLAMA2_FAITHFUL_STATS": "2" if stats else ""}
    env.pop("LLAMA2_FAITHFUL_VERIFY", None)
    t = timed_run(binary, args, env)
    return t.tok_s, t.rss_kb, t.story, t.stderr


def main(runs: int = 10, model: str | None = None, tokenizer: str | None = None) -> None:
    binary, tok, fp32, where = prepare(runs, model, tokenizer)
    faithful = converted(fp32, "faithful", where)
    base = [str(faithful), "-z", str(tok), *CONTEST_ARGS]
    print(f"faithful bench: {faithful} ({faithful.stat().st_size / 2**20:.1f} MiB), {runs} runs")
    print(f"  per path: {binary} FILE {' '.join(CONTEST_ARGS)} -k PATH")
    tok_s: dict[str, list[float]] = {p: [] for p in PATHS}
    rss: dict[str, list[int]] = {p: [] for p in PATHS}
    stories: dict[str, set[str]] = {p: set() for p in PATHS}
    contest = Sampled()
    for i in range(runs):
        for label, extra in PATHS.items():  # interleaved: the paths share the machine's moods
            t, r, story, err = run(binary, [*base, *extra], stats=label == "-k faithful")
            tok_s[label].append(t)
            rss[label].append(r)
            stories[label].add(story)
            if label == "-k faithful" and i == 0:
                contest.add(err)
        print(f"\r  run {i + 1}/{runs}", end="", flush=True)
    print()
    sweep = Sampled()
    for seed in SWEEP_SEEDS:
        args = [str(faithful), "-z", str(tok), "-t", "1.0", "-p", "0.9", "-s", str(seed)]
        sweep.add(run(binary, [*args, "-i", "Once upon a time", "-k", "faithful"], True)[3])
    reference = next(iter(stories["-k ref"]))
    ref_speed, fast_speed = statistics.mean(tok_s["-k ref"]), statistics.mean(tok_s["-k fast"])
    print(
        f"{'path':<14}{'mean tok/s':>12}{'median':>10}{'x ref':>8}{'x fast':>8}"
        f"{'peak RSS MiB':>14}{'story = ref':>13}"
    )
    for label in PATHS:
        mean = statistics.mean(tok_s[label])
        same = "yes" if stories[label] == {reference} else "no"
        if len(stories[label]) > 1:
            same = "varies!"
        print(
            f"{label:<14}{mean:>12.1f}{statistics.median(tok_s[label]):>10.1f}"
            f"{mean / ref_speed:>8.2f}{mean / fast_speed:>8.2f}"
            f"{max(rss[label]) / 1024:>14.1f}{same:>13}"
        )
    print("faithful sampler:")
    print(contest.line("contest run (seed 123)"))
    print(sweep.line(f"seeds {SWEEP_SEEDS[0]}-{SWEEP_SEEDS[-1]}, Once upon a time"))

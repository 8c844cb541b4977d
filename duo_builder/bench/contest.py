"""`invoke bench`: the 2023 contest's protocol, for every compute path side by side.

Each run is `llama2 MODEL -t 1.0 -p 0.9 -s 123 -i 'Once upon a time'` with stdout
redirected to a file; its `achieved tok/s` line is read from stderr and its peak RSS from
GNU time (a child forked by Python would count Python's own pages in its peak). Runs of
the paths are interleaved so that they share the machine's moods. A story matches when
it is byte-identical to the reference path's.
"""

import re
import statistics
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from duo_builder.build import engine
from duo_builder.build.hostdeps import ensure_commands
from duo_builder.errors import BuildError
from duo_builder.paths import BUILD, LLAMA_TOKENIZER

GNU_TIME = "/usr/bin/time"
CONTEST_ARGS = ["-t", "1.0", "-p", "0.9", "-s", "123", "-i", "Once upon a time"]
TOKS_RE = re.compile(r"achieved tok/s: ([0-9.]+)")


class BenchError(BuildError):
    """A benchmark could not run; the message names the cause."""


@dataclass
class Runs:
    label: str
    model: Path
    extra: list[str]
    tok_s: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    stories: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Timed:
    """One run of the engine under GNU time."""

    tok_s: float
    rss_kb: int  # peak
    story: str
    stderr: str


def timed_run(binary: Path, args: Sequence[str], env: Mapping[str, str] | None = None) -> Timed:
    """`binary args` under GNU time, its stdout redirected to a file as in the contest."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err, rss = Path(tmp, "out"), Path(tmp, "err"), Path(tmp, "rss")
        cmd = [GNU_TIME, "-f", "%M", "-o", str(rss), str(binary), *args]
        with open(out, "wb") as o, open(err, "wb") as e:
            code = subprocess.run(cmd, stdout=o, stderr=e, env=env).returncode
        story = out.read_bytes().decode("utf-8", "replace")
        errtext = err.read_text(errors="replace")
        peak = rss.read_text().strip().splitlines()
    if code != 0:
        raise BenchError(f"{binary} {' '.join(args)} failed: {errtext.strip()}")
    m = TOKS_RE.search(errtext)
    if not m:
        raise BenchError(f"no 'achieved tok/s' line from {binary} {' '.join(args)}")
    return Timed(float(m.group(1)), int(peak[-1]), story, errtext)


def run_once(
    binary: Path, model: Path, tokenizer: Path, extra: list[str]
) -> tuple[float, int, str]:
    """One contest run: (tok/s, peak RSS in kB, story)."""
    t = timed_run(binary, [str(model), "-z", str(tokenizer), *CONTEST_ARGS, *extra])
    return t.tok_s, t.rss_kb, t.story


def converted(fp32: Path, fmt: str, where: Path) -> Path:
    """`fp32` in format `fmt` (q80, or packed fp32/q8/q4/faithful), converted when missing
    or stale: older than `fp32` or than the converter's own modules (a format change)."""
    from duo_builder.model import convert as converter

    out = where / f"{fp32.stem}-{fmt}.bin"
    sources = [fp32, *Path(converter.__file__).parent.glob("*.py")]
    if not out.exists() or out.stat().st_mtime < max(f.stat().st_mtime for f in sources):
        converter.convert(fp32, out, fmt)
    return out


def default_model() -> Path:
    """synth15m (stories15M's exact shape), made once."""
    from duo_builder.model.synthetic import make_synthetic

    fp32 = BUILD / "test-models" / "synth15m.bin"
    if not fp32.exists():
        make_synthetic(fp32)
    return fp32


def default_models() -> tuple[Path, Path]:
    """synth15m and its Q8_0 (v2) conversion."""
    fp32 = default_model()
    return fp32, converted(fp32, "q80", fp32.parent)


def prepare(runs: int, model: str | None, tokenizer: str | None) -> tuple[Path, Path, Path, Path]:
    """What every host benchmark starts from: (the engine, the tokenizer, the fp32 model,
    the directory its conversions go to)."""
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    ensure_commands({GNU_TIME: "time"}, "measuring peak RSS")
    # linked statically, as on the Duo, so peak RSS is the engine's and not the host's
    # shared libraries'
    binary = engine.build("host-static")
    tok = Path(tokenizer) if tokenizer else LLAMA_TOKENIZER
    fp32 = Path(model) if model else default_model()
    where = BUILD / "bench" if model else fp32.parent
    where.mkdir(parents=True, exist_ok=True)
    return binary, tok, fp32, where


def main(runs: int = 30, model: str | None = None, tokenizer: str | None = None) -> None:
    binary, tok, fp32, where = prepare(runs, model, tokenizer)
    files = {fmt: converted(fp32, fmt, where) for fmt in ("q80", "fp32", "q8", "q4")}
    paths = [
        Runs("fp32 ref (-k ref)", fp32, ["-k", "ref"]),
        Runs("fp32 fast (default)", fp32, []),
        Runs("packed fp32 -k ref", files["fp32"], ["-k", "ref"]),
        Runs("packed fp32 fast", files["fp32"], []),
        Runs("Q8_0 (v2, runq.c)", files["q80"], []),
        Runs("packed q8", files["q8"], []),
        Runs("packed q4", files["q4"], []),
    ]
    print(f"contest protocol: {runs} runs per path, {binary} {' '.join(CONTEST_ARGS)}")
    for r in paths:
        print(f"  {r.label:<22}{r.model} ({r.model.stat().st_size / 2**20:.1f} MiB)")
    for i in range(runs):
        for r in paths:
            tps, rss, story = run_once(binary, r.model, tok, r.extra)
            r.tok_s.append(tps)
            r.rss_kb.append(rss)
            r.stories.add(story)
        print(f"\r  run {i + 1}/{runs}", end="", flush=True)
    print()
    reference = next(iter(paths[0].stories))
    base = statistics.mean(paths[0].tok_s)
    q80 = statistics.mean(paths[4].tok_s)
    print(
        f"{'path':<22}{'mean tok/s':>12}{'median':>10}{'x ref':>8}{'x Q8_0':>8}"
        f"{'peak RSS MiB':>14}{'story = ref':>13}"
    )
    for r in paths:
        same = "yes" if r.stories == {reference} else "no"
        if len(r.stories) > 1:
            same = "varies!"
        mean = statistics.mean(r.tok_s)
        print(
            f"{r.label:<22}{mean:>12.1f}{statistics.median(r.tok_s):>10.1f}"
            f"{mean / base:>8.2f}{mean / q80:>8.2f}{max(r.rss_kb) / 1024:>14.1f}{same:>13}"
        )

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
from dataclasses import dataclass, field
from pathlib import Path

from . import engine
from .hostdeps import ensure_commands
from .paths import BUILD, LLAMA_TOKENIZER

GNU_TIME = "/usr/bin/time"
CONTEST_ARGS = ["-t", "1.0", "-p", "0.9", "-s", "123", "-i", "Once upon a time"]
TOKS_RE = re.compile(r"achieved tok/s: ([0-9.]+)")


class BenchError(Exception):
    """A benchmark could not run; the message names the cause."""


@dataclass
class Runs:
    label: str
    model: Path
    extra: list[str]
    tok_s: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    stories: set[str] = field(default_factory=set)


def run_once(
    binary: Path, model: Path, tokenizer: Path, extra: list[str]
) -> tuple[float, int, str]:
    """One contest run: (tok/s, peak RSS in kB, story)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err, rss = Path(tmp, "out"), Path(tmp, "err"), Path(tmp, "rss")
        cmd = [
            GNU_TIME,
            "-f",
            "%M",
            "-o",
            str(rss),
            str(binary),
            str(model),
            "-z",
            str(tokenizer),
            *CONTEST_ARGS,
            *extra,
        ]
        with open(out, "wb") as o, open(err, "wb") as e:
            code = subprocess.run(cmd, stdout=o, stderr=e).returncode
        story = out.read_bytes().decode("utf-8", "replace")
        errtext = err.read_text(errors="replace")
        peak = rss.read_text().strip().splitlines()
    if code != 0:
        raise BenchError(f"{binary} {model} {' '.join(extra)} failed: {errtext.strip()}")
    m = TOKS_RE.search(errtext)
    if not m:
        raise BenchError(f"no 'achieved tok/s' line from {binary} {' '.join(extra)}")
    return float(m.group(1)), int(peak[-1]), story


def default_models() -> tuple[Path, Path]:
    """synth15m (stories15M's exact shape) and its Q8_0 conversion, made once."""
    from .convert import convert
    from .synthetic import make_synthetic

    base = BUILD / "test-models"
    fp32, q80 = base / "synth15m.bin", base / "synth15m-q80.bin"
    if not fp32.exists():
        make_synthetic(fp32)
    if not q80.exists() or q80.stat().st_mtime < fp32.stat().st_mtime:
        convert(fp32, q80, "q80")
    return fp32, q80


def main(runs: int = 30, model: str | None = None, tokenizer: str | None = None) -> None:
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    ensure_commands({GNU_TIME: "time"}, "measuring peak RSS")
    binary = engine.build("host")
    tok = Path(tokenizer) if tokenizer else LLAMA_TOKENIZER
    if model:
        from .convert import convert

        fp32 = Path(model)
        q80 = BUILD / "bench" / (fp32.stem + "-q80.bin")
        convert(fp32, q80, "q80")
    else:
        fp32, q80 = default_models()
    paths = [
        Runs("fp32 ref (-k ref)", fp32, ["-k", "ref"]),
        Runs("fp32 fast (default)", fp32, []),
        Runs("Q8_0 (v2 file)", q80, []),
    ]
    print(f"contest protocol: {runs} runs per path, {binary} {' '.join(CONTEST_ARGS)}")
    print(
        f"model {fp32} ({fp32.stat().st_size / 1e6:.1f} MB), q80 {q80.stat().st_size / 1e6:.1f} MB"
    )
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
    print(
        f"{'path':<22}{'mean tok/s':>12}{'median':>10}{'x ref':>8}{'peak RSS MB':>13}"
        f"{'story = ref':>13}"
    )
    for r in paths:
        same = "yes" if r.stories == {reference} else "no"
        if len(r.stories) > 1:
            same = "varies!"
        mean = statistics.mean(r.tok_s)
        print(
            f"{r.label:<22}{mean:>12.1f}{statistics.median(r.tok_s):>10.1f}"
            f"{mean / base:>8.2f}{max(r.rss_kb) / 1024:>13.1f}{same:>13}"
        )

"""`invoke bench --board`: the 2023 contest's protocol on a running board, over SSH.

For every model file in /usr/share/storyteller/ (model.bin, and e.g. a faithful file put
beside it with `invoke deploy --extra-model`), in that directory (so llama2 finds
tokenizer.bin as run.c does):
    llama2 MODEL -t 1.0 -p 0.9 -s 123 -i 'Once upon a time' > story.N 2> err.N
N times; the highest and the lowest `achieved tok/s` are dropped (with 3 runs or more) and
the rest averaged. Every story is compared byte for byte with fp32 run.c's: computed on
this host with `llama2 -k ref` (run.c's exact arithmetic) from the recipe's fp32 model when
the host has it, else the first run's story is the reference, and the table says so.
Apart from the timed runs (so polling costs them nothing): one more run for peak RSS
(/usr/bin/time -v when the board has it, else VmHWM from /proc/PID/status polled) and the
lowest MemAvailable meanwhile; then the storyteller speaking the story into a WAV on the
board, for the TTS time (its own `tts:` line: CPU seconds for seconds of audio).
The table is printed, and everything goes to out/bench-board-HOST-PORT.json.
"""

import json
import re
import shlex
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from duo_builder.board.ssh import Board, BoardError
from duo_builder.fsutil import atomic_writer, sha256_file
from duo_builder.image import recipe
from duo_builder.paths import REPO

MODELS_DIR = "/usr/share/storyteller"
WORK = "/tmp/duo-bench"
PROMPT = "Once upon a time"
CONTEST_ARGS = ["-t", "1.0", "-p", "0.9", "-s", "123", "-i", PROMPT]
TOKS_RE = re.compile(r"achieved tok/s: ([0-9.]+)")
TTS_RE = re.compile(r"tts: ([0-9.]+) s CPU for ([0-9.]+) s of audio")
OUT = REPO / "out"


@dataclass
class ModelResult:
    file: str
    size: int
    sha256: str
    tok_s: list[float] = field(default_factory=list)
    mean_tok_s: float = 0.0  # highest and lowest dropped (runs >= 3)
    stories_equal_reference: list[bool] = field(default_factory=list)
    story_bytes: int = 0
    peak_rss_kb: int | None = None
    rss_method: str = ""
    mem_available_min_kb: int | None = None

    @property
    def all_equal(self) -> bool:
        return all(self.stories_equal_reference)


@dataclass
class BoardBench:
    board: str
    runs: int
    command: str
    reference: str  # where the reference story came from
    reference_story: str
    mem_total_kb: int | None
    mem_available_before_kb: int | None
    models: list[ModelResult]
    tts: dict[str, Any]
    seconds: float


def contest_mean(values: list[float]) -> float:
    """The contest's mean: highest and lowest dropped (when there are 3 or more)."""
    kept = sorted(values)[1:-1] if len(values) >= 3 else list(values)
    return statistics.mean(kept)


def host_reference(r: recipe.Recipe) -> tuple[str | None, str]:
    """(fp32 run.c's story computed here with -k ref, where from) or (None, why not)."""
    from duo_builder.build import engine
    from duo_builder.model.download import cache_dir

    m = r.model
    candidates = [REPO / m.path, cache_dir() / m.sha256 / Path(m.path).name]
    fp32 = next((p for p in candidates if p.is_file() and sha256_file(p) == m.sha256), None)
    tokenizer = REPO / m.tokenizer
    if fp32 is None or not tokenizer.is_file():
        return None, f"no fp32 {Path(m.path).name} on this host (recipe {r.name})"
    binary = engine.build("host")
    cmd = [str(binary), str(fp32), "-z", str(tokenizer), "-k", "ref", *CONTEST_ARGS]
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0:
        raise BoardError(f"{' '.join(cmd)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode("utf-8", "replace"), f"fp32 run.c (-k ref) on this host: {fp32.name}"


def _models_on_board(board: Board) -> list[tuple[str, int, str]]:
    out = board.sh(
        f"command -v llama2 >/dev/null || {{ echo 'no llama2 on the board' >&2; exit 3; }}; "
        f'cd {MODELS_DIR} && for f in *.bin; do [ "$f" = tokenizer.bin ] && continue; '
        '[ -f "$f" ] && echo "$(wc -c < "$f") $(sha256sum "$f")"; done',
        what=f"looking for models in {MODELS_DIR} (deploy first: invoke deploy --host ...)",
    )
    found = []
    for line in out.splitlines():
        size, digest, name = line.split(None, 2)
        found.append((name.strip(), int(size), digest))
    if not found:
        raise BoardError(
            f"{board.target}: no model in {MODELS_DIR}: deploy first (invoke deploy --host ...)"
        )
    # model.bin (the image's) first
    return sorted(found, key=lambda x: (x[0] != "model.bin", x[0]))


def _timed_runs(board: Board, model: str, runs: int) -> tuple[list[float], list[str]]:
    q = shlex.quote
    args = " ".join(q(a) for a in CONTEST_ARGS)
    script = f"""cd {MODELS_DIR} || exit 1
rm -rf {WORK} && mkdir -p {WORK} || exit 1
i=1
while [ $i -le {runs} ]; do
    if ! llama2 {q(model)} {args} > {WORK}/story.$i 2> {WORK}/err.$i; then
        echo "run $i failed:" >&2; tail -n 3 {WORK}/err.$i >&2; exit 1
    fi
    i=$((i + 1))
done
for i in $(seq 1 {runs}); do echo "$i $(grep -o 'achieved tok/s: [0-9.]*' {WORK}/err.$i)"; done
"""
    out = board.sh(script, what=f"the contest runs of {model}")
    tok_s = []
    for line in out.splitlines():
        m = TOKS_RE.search(line)
        if not m:
            raise BoardError(f"{board.target}: no 'achieved tok/s' from llama2 {model}: {line}")
        tok_s.append(float(m[1]))
    stories = [
        board.exec(f"cat {WORK}/story.{i}", what="reading a story")[1].decode("utf-8", "replace")
        for i in range(1, runs + 1)
    ]
    return tok_s, stories


def _memory_run(board: Board, model: str) -> tuple[int | None, str, int | None]:
    """(peak RSS kB, how measured, lowest MemAvailable kB) from one more, untimed run."""
    q = shlex.quote
    args = " ".join(q(a) for a in CONTEST_ARGS)
    script = f"""cd {MODELS_DIR} || exit 1
avail() {{ sed -n 's/^MemAvailable:[[:space:]]*\\([0-9]*\\) kB/\\1/p' /proc/meminfo; }}
low=$(avail)
rm -f {WORK}/pid
# llama2 is exec'd by a shell that first writes its pid: the pid VmHWM is polled for
run="echo \\$\\$ > {WORK}/pid; exec llama2 {q(model)} {args}"
if [ -x /usr/bin/time ] && /usr/bin/time -v true 2>&1 | grep -q 'Maximum resident'; then
    /usr/bin/time -v sh -c "$run" > /dev/null 2> {WORK}/time.txt &
    method="/usr/bin/time -v"
else
    sh -c "$run" > /dev/null 2>&1 &
    method="VmHWM polled"
fi
waiter=$!
while [ ! -s {WORK}/pid ] && kill -0 $waiter 2>/dev/null; do sleep 0.05; done
pid=$(cat {WORK}/pid 2>/dev/null)
hwm=
while [ -r /proc/$pid/status ] && ! grep -q '^State:.*zombie' /proc/$pid/status; do
    v=$(sed -n 's/^VmHWM:[[:space:]]*\\([0-9]*\\) kB/\\1/p' /proc/$pid/status)
    [ -n "$v" ] && hwm=$v
    a=$(avail); [ -n "$a" ] && [ "$a" -lt "$low" ] && low=$a
    sleep 0.2
done
wait $waiter
polled=$hwm
if [ "$method" = "/usr/bin/time -v" ]; then
    hwm=$(sed -n 's/.*Maximum resident set size (kbytes): *\\([0-9]*\\).*/\\1/p' {WORK}/time.txt)
fi
echo "rss ${{hwm:-?}}"; echo "polled ${{polled:-?}}"; echo "method $method"; echo "low $low"
"""
    out = board.sh(script, what="the peak RSS run")
    vals = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    rss = int(vals["rss"]) if vals.get("rss", "?").isdigit() else None
    low = int(vals["low"]) if vals.get("low", "").isdigit() else None
    method = vals.get("method", "?")
    if method != "VmHWM polled" and vals.get("polled", "?").isdigit():
        method += f" (VmHWM polled: {int(vals['polled'])} kB)"
    return rss, method, low


def _tts(board: Board) -> dict[str, Any]:
    """The storyteller telling the contest's story into a WAV on the board: its TTS line."""
    status, _, _ = board.exec("command -v storyteller", check=False)
    if status != 0:
        return {"measured": False, "why": "no storyteller on the board"}
    cmd = (
        f"storyteller --config /etc/storyteller.conf --prompt {shlex.quote(PROMPT)} "
        f"--seed 123 --wav {WORK}/tts.wav > {WORK}/tts-story.txt"
    )
    start = time.monotonic()
    status, out, err = board.exec(cmd, check=False)
    wall = time.monotonic() - start
    text = err.decode(errors="replace")
    m = TTS_RE.search(text)
    board.exec(f"rm -f {WORK}/tts.wav", check=False)
    if status != 0 or not m:
        tail = text.strip().splitlines()[-1:] or [""]
        return {"measured": False, "why": f"storyteller exit {status}: {tail[0]}"}
    return {
        "measured": True,
        "tts_cpu_s": float(m[1]),
        "audio_s": float(m[2]),
        "storyteller_wall_s": round(wall, 2),
        "storyteller_lines": [ln for ln in text.splitlines() if ln.startswith("storyteller:")],
    }


def _meminfo(board: Board) -> dict[str, int]:
    out = board.sh("cat /proc/meminfo", what="reading /proc/meminfo")
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", out, re.M)}


def run(board: Board, runs: int, r: recipe.Recipe) -> BoardBench:
    if runs < 1:
        raise BoardError(f"--runs {runs}: at least 1 (the contest uses 30)")
    start = time.monotonic()
    models = _models_on_board(board)
    reference, source = host_reference(r)
    mem = _meminfo(board)
    results = []
    for name, size, digest in models:
        print(f"bench --board: {name} ({size / 2**20:.1f} MiB), {runs} runs", flush=True)
        res = ModelResult(f"{MODELS_DIR}/{name}", size, digest)
        res.tok_s, stories = _timed_runs(board, name, runs)
        if reference is None:
            reference = stories[0]
            source = f"the first run's story ({source})"
        res.mean_tok_s = contest_mean(res.tok_s)
        res.stories_equal_reference = [s == reference for s in stories]
        res.story_bytes = len(stories[0].encode())
        res.peak_rss_kb, res.rss_method, res.mem_available_min_kb = _memory_run(board, name)
        results.append(res)
    tts = _tts(board)
    board.exec(f"rm -rf {WORK}", check=False)
    command = f"llama2 MODEL {' '.join(shlex.quote(a) for a in CONTEST_ARGS)} > story"
    return BoardBench(
        board=str(board.target),
        runs=runs,
        command=command,
        reference=source,
        reference_story=reference or "",
        mem_total_kb=mem.get("MemTotal"),
        mem_available_before_kb=mem.get("MemAvailable"),
        models=results,
        tts=tts,
        seconds=round(time.monotonic() - start, 1),
    )


def table(b: BoardBench) -> str:
    dropped = "highest and lowest dropped" if b.runs >= 3 else "all kept (fewer than 3)"
    lines = [
        f"board {b.board}: {b.runs} runs per model ({dropped}), in {MODELS_DIR}: {b.command}",
        f"{'model':<28}{'MiB':>7}{'mean tok/s':>12}{'min':>9}{'max':>9}"
        f"{'peak RSS MiB':>14}{'story = run.c':>15}",
    ]
    for m in b.models:
        same = sum(m.stories_equal_reference)
        verdict = "yes" if m.all_equal else f"no ({same}/{len(m.stories_equal_reference)})"
        rss = f"{m.peak_rss_kb / 1024:.1f}" if m.peak_rss_kb else "?"
        lines.append(
            f"{Path(m.file).name:<28}{m.size / 2**20:>7.1f}{m.mean_tok_s:>12.2f}"
            f"{min(m.tok_s):>9.2f}{max(m.tok_s):>9.2f}{rss:>14}{verdict:>15}"
        )
    mem = b.mem_available_before_kb
    lows = [m.mem_available_min_kb for m in b.models if m.mem_available_min_kb]
    lines.append(
        f"reference story: {b.reference}; MemTotal {_mib(b.mem_total_kb)}, MemAvailable "
        f"{_mib(mem)} before, {_mib(min(lows) if lows else None)} lowest while telling "
        f"(peak RSS: {b.models[0].rss_method}, a run apart from the timed ones)"
    )
    t = b.tts
    if t.get("measured"):
        lines.append(
            f"TTS (storyteller into a WAV on the board): {t['tts_cpu_s']:.2f} s CPU for "
            f"{t['audio_s']:.2f} s of audio"
        )
    else:
        lines.append(f"TTS: not measured: {t.get('why')}")
    return "\n".join(lines)


def _mib(kb: int | None) -> str:
    return f"{kb / 1024:.1f} MiB" if kb else "?"


def write_json(b: BoardBench, path: Path | None = None) -> Path:
    target = b.board.split("@")[-1].replace(":", "-")
    path = path or OUT / f"bench-board-{target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(b)
    for m, res in zip(data["models"], b.models, strict=True):
        m["all_stories_equal_reference"] = res.all_equal
    with atomic_writer(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())
    return path

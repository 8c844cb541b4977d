"""Coverage-guided fuzzing of the engine's file readers (engine/fuzz/, clang's libFuzzer under
AddressSanitizer + UndefinedBehaviorSanitizer): `invoke fuzz` and tests/test_fuzz.py.

Targets: one model loader per file format (model_v0 ... model_faithful), the tokenizer
(load, encode, decode), the storyteller's config file and its WAV reader. Each starts from
seeds made from real files: models/stories260K.bin converted to the target's format (and a
tiny checkpoint of the same kind, which mutates faster), models/tok512.bin,
overlay/etc/storyteller.conf, a request spoken by eSpeak NG. What a run finds new is kept
in build/fuzz/corpus/<target>/; a finding (crash, sanitizer report, leak, timeout, memory
blow-up) is saved under build/fuzz/findings/<target>/ and fails the run."""

import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from duo_builder.build.hostdeps import HostDependencyError, ensure_commands, ensure_packages
from duo_builder.errors import BuildError, run
from duo_builder.fsutil import atomic_writer
from duo_builder.model.checkpoint import Config
from duo_builder.model.convert import convert
from duo_builder.paths import BUILD, DEFAULT_MODEL, DEFAULT_TOKENIZER, ENGINE_SRC, REPO

FUZZ = BUILD / "fuzz"
# Inputs that once found a defect (issue 14): fixtures of the tests, seeds of the targets
REGRESSIONS = ENGINE_SRC / "fuzz" / "regressions"
SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all"
CFLAGS = f"-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,{SANITIZE.split('=', 1)[1]}"
# libFuzzer's limits: one input may take this long / allocate this much in one malloc
TIMEOUT_S = 25
MALLOC_LIMIT_MB = 512
RSS_LIMIT_MB = 2048

# target -> the convert() format of its model seeds
MODEL_FORMATS = {
    "model_v0": "v0",
    "model_v1": "v1",
    "model_q80": "q80",
    "model_packed_f32": "fp32",
    "model_packed_q8": "q8",
    "model_packed_q4": "q4",
    "model_faithful": "faithful",
}
TARGETS = (*MODEL_FORMATS, "tokenizer", "config", "wav")
# Python targets (Hypothesis, no libFuzzer binary): the recipe loader (image/recipe_fuzz.py)
PY_TARGETS = ("recipe",)
# A checkpoint of stories260K's kind, small enough that mutations reach deep quickly
TINY = Config(dim=32, hidden_dim=64, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, seq_len=8)
PROMPTS = (b"Once upon a time", b"", "Lily saw a dragon \u00e9\u00e8 \U0001f409".encode())


class FuzzError(BuildError):
    """Fuzzing could not run, or it found a defect (the reproducer is named)."""


@dataclass(frozen=True)
class Outcome:
    target: str
    seconds: float
    execs: int
    execs_per_s: int
    new_units: int
    peak_rss_mb: int
    finding: Path | None  # the reproducer libFuzzer saved, None when clean
    log: Path


def binary(target: str) -> Path:
    return FUZZ / f"fuzz_{target}"


def build() -> None:
    """Compile every harness into build/fuzz/ with clang (installed when missing)."""
    try:
        ensure_commands({"clang": "clang", "make": "make"}, "fuzzing the engine")
        if not _libfuzzer_links():  # Debian: clang only recommends its runtime libraries
            ensure_packages([f"libclang-rt-{_clang_major()}-dev"], "clang's libFuzzer")
    except HostDependencyError as e:
        raise FuzzError(str(e)) from None
    if not _libfuzzer_links():
        raise FuzzError("clang cannot link -fsanitize=fuzzer (is libclang-rt-*-dev installed?)")
    cmd = [
        "make",
        "-C",
        str(ENGINE_SRC),
        f"-j{os.cpu_count() or 2}",
        f"O={FUZZ}",
        "CC=clang",
        f"CFLAGS={CFLAGS}",
        f"LDFLAGS={SANITIZE}",
        "fuzz",
    ]
    run(cmd, what="building the fuzz harnesses (engine/fuzz/)", error=FuzzError)


def _clang_major() -> str:
    out = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"clang version (\d+)", out)
    if not m:
        raise FuzzError(f"cannot tell clang's version from `clang --version`: {out[:80]!r}")
    return m.group(1)


def _libfuzzer_links() -> bool:
    """Whether clang links a libFuzzer harness with both sanitizers here."""
    FUZZ.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=FUZZ) as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(
            "#include <stddef.h>\n#include <stdint.h>\n"
            "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; "
            "return 0; }\n"
        )
        cmd = ["clang", "-fsanitize=fuzzer,address,undefined", str(src), "-o", f"{tmp}/probe"]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def resolve(names: str) -> list[str]:
    """'' or 'all' = every target; 'model' = the seven model targets; else a comma list."""
    if names in ("", "all"):
        return [*TARGETS, *PY_TARGETS]
    chosen: list[str] = []
    for name in names.split(","):
        name = name.strip().removeprefix("fuzz_")
        if name == "model":
            chosen += MODEL_FORMATS
        elif name in TARGETS or name in PY_TARGETS:
            chosen.append(name)
        else:
            raise FuzzError(
                f"unknown fuzz target {name!r}; choose from: all, model, "
                f"{', '.join((*TARGETS, *PY_TARGETS))}"
            )
    return chosen


# --- seeds ------------------------------------------------------------------------------


def seeds(target: str) -> Path:
    """build/fuzz/seeds/<target>/, made once from real files (remade when emptied)."""
    out = FUZZ / "seeds" / target
    if out.is_dir() and any(out.iterdir()):
        return out
    makers: dict[str, Callable[[Path], None]] = {
        "tokenizer": _tokenizer_seeds,
        "config": _config_seeds,
        "wav": _wav_seeds,
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if target in MODEL_FORMATS:
            _model_seeds(tmp, MODEL_FORMATS[target])
        else:
            makers[target](tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_checkpoint(dst: Path, seed: int = 7) -> Path:
    """A legacy (v0) checkpoint of TINY's shape with random weights."""
    from duo_builder.model.checkpoint import freq_cis, v0_header

    rng = np.random.default_rng(seed)
    c = TINY
    shapes = [
        (c.vocab_size, c.dim),  # embedding (shared classifier)
        (c.n_layers, c.dim),  # rms_att
        (c.n_layers, c.dim, c.dim),  # wq
        (c.n_layers, c.kv_dim, c.dim),  # wk
        (c.n_layers, c.kv_dim, c.dim),  # wv
        (c.n_layers, c.dim, c.dim),  # wo
        (c.n_layers, c.dim),  # rms_ffn
        (c.n_layers, c.hidden_dim, c.dim),  # w1
        (c.n_layers, c.dim, c.hidden_dim),  # w2
        (c.n_layers, c.hidden_dim, c.dim),  # w3
        (c.dim,),  # rms_final
    ]
    with atomic_writer(dst) as f:
        f.write(v0_header(c))
        for shape in shapes:
            f.write((rng.standard_normal(shape, dtype=np.float32) * 0.1).astype("<f4").data)
        for table in freq_cis(c):
            f.write(np.ascontiguousarray(table, dtype="<f4").data)
    return dst


def _model_seeds(out: Path, fmt: str) -> None:
    tiny = tiny_checkpoint(out.parent / f"tiny-{fmt}-v0.bin")
    try:
        convert(DEFAULT_MODEL, out / f"stories260K-{fmt}.bin", fmt)
        convert(tiny, out / f"tiny-{fmt}.bin", fmt)
    finally:
        tiny.unlink(missing_ok=True)


def tokenizer_input(prompt: bytes, tokenizer: bytes) -> bytes:
    """fuzz_tokenizer's input: [uint16 LE prompt length][prompt][tokenizer file]."""
    return struct.pack("<H", len(prompt)) + prompt + tokenizer


def _tokenizer_seeds(out: Path) -> None:
    tok = DEFAULT_TOKENIZER.read_bytes()
    for i, prompt in enumerate(PROMPTS):
        (out / f"tok512-{i}").write_bytes(tokenizer_input(prompt, tok))


def _config_seeds(out: Path) -> None:
    conf = REPO / "overlay" / "etc" / "storyteller.conf"
    shutil.copyfile(conf, out / "storyteller.conf")
    (out / "short.conf").write_text("temperature = 0.8\ntopp = 0.95\nseed = 42\nsteps = 64\n")


def _wav_seeds(out: Path) -> None:
    try:
        ensure_commands({"espeak-ng": "espeak-ng"}, "the WAV fuzz target's seeds")
    except HostDependencyError as e:
        raise FuzzError(str(e)) from None
    spoken = out / "tell-me-a-story.wav"
    run(
        ["espeak-ng", "-w", str(spoken), "tell me a story"],
        what="speaking the WAV fuzz seed",
        error=FuzzError,
    )
    # the same samples cut short as 16 kHz stereo: another rate and channel count
    with wave.open(str(spoken)) as w:
        frames = w.readframes(4000)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(frames)
    (out / "stereo-16k.wav").write_bytes(buf.getvalue())


# --- running ------------------------------------------------------------------------------

_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def fuzz(
    target: str,
    seconds: int,
    *,
    progress: bool = True,
    nice: int = 0,
    exe: Path | None = None,
    work: Path = FUZZ,
) -> Outcome:
    """Run one harness for `seconds` from its seeds and corpus; build() first. `exe` and
    `work` (where corpus, findings and logs go) default to build/fuzz/'s."""
    if target in PY_TARGETS:
        from duo_builder.image import recipe_fuzz

        spent, execs, rss, finding, log = recipe_fuzz.rounds(seconds, work)
        per_s = int(execs / spent) if spent else 0
        return Outcome(target, spent, execs, per_s, 0, rss, finding, log)
    exe = exe or binary(target)
    if not exe.exists():
        raise FuzzError(f"{exe} is missing: build the harnesses first (`invoke fuzz` does)")
    corpus = work / "corpus" / target
    findings = work / "findings" / target
    log = work / "logs" / f"{target}.log"
    for d in (corpus, findings, log.parent):
        d.mkdir(parents=True, exist_ok=True)
    cmd = [
        *(["nice", "-n", str(nice)] if nice else []),
        str(exe),
        f"-max_total_time={seconds}",
        f"-timeout={TIMEOUT_S}",
        f"-malloc_limit_mb={MALLOC_LIMIT_MB}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        str(corpus),
        str(seeds(target)),
        *([str(REGRESSIONS / target)] if (REGRESSIONS / target).is_dir() else []),
    ]
    env = {**os.environ, "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    start = time.monotonic()
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        with tqdm(
            total=seconds, desc=f"fuzz_{target}", unit=" s", disable=not progress, leave=False
        ) as bar:
            while p.poll() is None:
                time.sleep(1)
                bar.n = min(seconds, int(time.monotonic() - start))
                bar.refresh()
    text = log.read_text(errors="replace")
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    artifact = _ARTIFACT.search(text)
    finding = Path(artifact.group(1)) if artifact else None
    if p.returncode != 0 and finding is None:  # no reproducer named: keep the log as one
        raise FuzzError(
            f"fuzz_{target} exited {p.returncode} without naming a reproducer; see {log}"
        )
    return Outcome(
        target,
        time.monotonic() - start,
        stats.get("number_of_executed_units", 0),
        stats.get("average_exec_per_sec", 0),
        stats.get("new_units_added", 0),
        stats.get("peak_rss_mb", 0),
        finding,
        log,
    )


def reproduce(target: str, inputs: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    """Run the harness once on each input file (libFuzzer's reproduce mode), with the
    limits of a fuzzing run: exit 0 when none breaks it."""
    cmd = [
        str(binary(target)),
        f"-timeout={TIMEOUT_S}",
        f"-malloc_limit_mb={MALLOC_LIMIT_MB}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        *map(str, inputs),
    ]
    env = {**os.environ, "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)


def describe(o: Outcome) -> str:
    head = (
        f"fuzz_{o.target}: {o.execs:,} execs in {o.seconds:.0f} s ({o.execs_per_s:,}/s), "
        f"{o.new_units} new corpus units, peak RSS {o.peak_rss_mb} MB"
    )
    if o.finding is None:
        return head + ", no findings"
    return f"{head}: FINDING saved as {o.finding} (reproduce: {binary(o.target)} {o.finding})"


def fuzz_all(targets: Sequence[str], seconds: int, *, progress: bool = True) -> list[Outcome]:
    """Build, run each target in turn and print one line each; FuzzError if any found
    something (after all ran)."""
    build()
    outcomes = []
    for t in targets:
        o = fuzz(t, seconds, progress=progress)
        print(describe(o), flush=True)
        outcomes.append(o)
    bad = [o for o in outcomes if o.finding]
    if bad:
        names = ", ".join(f"fuzz_{o.target} ({o.finding})" for o in bad)
        raise FuzzError(f"{len(bad)} fuzz target(s) found a defect: {names}")
    return outcomes

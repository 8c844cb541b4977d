"""`invoke bench --asr`: how well the storyteller hears requests, and refuses the rest.

A labelled set is spoken by espeak-ng in five voices (US, British, a child-like high
pitch, fast, slow) and made less clean with sox (level changes, mild noise), then each
utterance goes through the real host storyteller (`--mic-wav`), which says on stderr what
it heard (`heard "..."`) and exits 2 when it refused. The set: every kind of request of
the grammar (each subject, each name, names with things, "again", "stop"), sentences
outside the grammar (weather, music, questions, greetings, near-misses), and silence and
noise clips. Everything is deterministic (fixed seeds, sox -R without dither), and cached
under build/asr-bench/ by a digest of what made it.

Figures: requests understood (the storyteller acted on the request's meaning), speech
outside the grammar refused (the spoken sorry), and false stops (a "stop" heard in
anything that was not one: the robot would fall silent).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import wave
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duo_builder.build import engine, hostdeps
from duo_builder.errors import BuildError
from duo_builder.paths import BUILD, DEFAULT_MODEL, DEFAULT_TOKENIZER, ENGINE_SRC

ASR_RATE = 16000  # engine/storyteller/asr.h
DICT = ENGINE_SRC / "storyteller" / "story.dict"
PROMPTS_C = ENGINE_SRC / "storyteller" / "prompts.c"
CACHE = BUILD / "asr-bench"
HEARD_RE = re.compile(r'storyteller: heard "(.*)"')


class AsrBenchError(BuildError):
    """The labelled set could not be made, or the storyteller failed on it."""


# espeak-ng arguments per voice: the US voice the grammar was tuned with, the British
# default that heard "dragon" as "frog", a child-like high pitch and two speaking rates
VOICES: dict[str, list[str]] = {
    "en-us": ["-v", "en-us"],
    "en-gb": ["-v", "en-gb"],
    "child": ["-v", "en-us+f2", "-p", "85"],
    "fast": ["-v", "en-gb", "-s", "240"],
    "slow": ["-v", "en-us", "-s", "110"],
}
THINGS = (
    "a dragon, a cat, a dog, a bird, a fish, a bear, a bunny, a frog, a monkey, a princess, "
    "a robot, a tree, a flower, a little girl, a little boy, an elephant, the moon, the sea"
).split(", ")
NAMES = ("lily", "ben", "tim", "sam")

# Every kind of request: each subject alone, each name, names with things and each other,
# the bare story, every way of asking again and of stopping, with and without "please"
REQUESTS: list[str] = [
    *(f"tell me a story about {t}" for t in THINGS),
    *(f"a story about {n}" for n in NAMES),
    "tell me a story about lily and a cat",
    "a story about ben and the sea",
    "tell me a story about tim and sam",
    "please tell me a story",
    "a story please",
    "again",
    "tell it again",
    "please tell me the same story again",
    "stop",
    "please stop it",
    "be quiet",
]

# Speech the robot cannot act on: it must say sorry, never tell a story or stop
OUT_OF_GRAMMAR: list[str] = [
    "what is the weather today",
    "play some music",
    "is it going to rain tomorrow",
    "turn on the lights",
    "what time is it",
    "how old are you",
    "hello robot",
    "good morning",
    "my name is emma",
    "I want a sandwich",
    "can we go to the park",
    "where is my teddy",
    "sing me a song",
    "read me a book",
    "tell me a joke",
    "what is your name",
    "I do not like broccoli",
    "the cat is sleeping on the sofa",
    "let us play hide and seek",
    "why is the sky blue",
    "open the door",
    "call grandma",
    "how many legs does a spider have",
    "I am hungry",
    "bye bye",
    "give me a cookie",
    "count to ten",
    "start the car",
    "draw me a picture",
    "thank you very much",
]

# Noise alone: the robot must not hear a request in it
NOISE_CLIPS: list[str] = ["silence", "hiss", "loud hiss", "hum", "babble"]

LEVELS_DB = (-1.0, -8.0, -16.0, -26.0)  # peak level of the speech, dBFS
SNRS_DB = (35.0, 25.0, 20.0)  # speech over white noise


@dataclass(frozen=True)
class Utterance:
    group: str  # a voice name, or "noise"
    text: str  # what was said; for noise clips, the clip's kind
    in_grammar: bool
    level_db: float
    snr_db: float
    seed: int

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-")
        return f"{self.group}-{slug}"


def labelled_set() -> list[Utterance]:
    """Requests in every voice, out-of-grammar sentences in every voice, noise clips; the
    level and noise cycle through LEVELS_DB and SNRS_DB so every voice meets each."""
    out: list[Utterance] = []
    seed = 1
    for voice in VOICES:
        for texts, in_grammar in ((REQUESTS, True), (OUT_OF_GRAMMAR, False)):
            for text in texts:
                out.append(
                    Utterance(
                        voice,
                        text,
                        in_grammar,
                        LEVELS_DB[seed % len(LEVELS_DB)],
                        SNRS_DB[seed % len(SNRS_DB)],
                        seed,
                    )
                )
                seed += 1
    for clip in NOISE_CLIPS:
        out.append(Utterance("noise", clip, False, -20.0, 0.0, seed))
        seed += 1
    return out


# ---- the meaning of a word string, as prompts.c's prompts_interpret gives it -------------


def _subject_words() -> tuple[list[str], list[str]]:
    source = PROMPTS_C.read_text(encoding="utf-8")
    things = re.findall(r'\{"([a-z]+)", ONCE', source)
    names = re.findall(r'\{"([a-z]+)", "[A-Z][a-z]*", ONCE', source)
    if not things or not names:
        raise AsrBenchError(f"{PROMPTS_C}: no THINGS/NAMES tables found")
    return things, names


def meaning(text: str, things: list[str], names: list[str]) -> tuple[str, ...] | None:
    """What the storyteller does with `text`: ("stop",), ("again",), ("story", thing,
    name, name) or None (sorry). Mirrors prompts_interpret()."""
    words = re.findall(r"[a-z]+", text.lower())
    if "stop" in words or "quiet" in words:
        return ("stop",)
    if "again" in words or "same" in words:
        return ("again",)
    thing = next((w for w in words if w in things), "")
    heard_names = list(dict.fromkeys(w for w in words if w in names))[:2]
    if thing or heard_names or "story" in words:
        return ("story", thing, *heard_names)
    return None


# ---- making the set ---------------------------------------------------------------------


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise AsrBenchError(f"{what} failed: {' '.join(cmd)}: {r.stderr.strip()[-300:]}")


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(ASR_RATE)
        w.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def _noise_clip(u: Utterance) -> np.ndarray:
    rng = np.random.default_rng(u.seed)
    n = int(ASR_RATE * 1.5)
    t = np.arange(n) / ASR_RATE
    if u.text == "silence":
        return rng.normal(0, 2, n)  # a quiet room through a real microphone is never zero
    if u.text == "hiss":
        return rng.normal(0, 300, n)
    if u.text == "loud hiss":
        return rng.normal(0, 3000, n)
    if u.text == "hum":
        return 2000 * np.sin(2 * np.pi * 50 * t) + 600 * np.sin(2 * np.pi * 150 * t)
    # babble: noise shaped by a slow random envelope, speech-like in its rhythm
    envelope = np.repeat(rng.uniform(0, 1, n // 1600 + 1), 1600)[:n]
    return np.convolve(rng.normal(0, 3000, n), np.ones(8) / 8, "same") * envelope


def _make(u: Utterance, path: Path, work: Path) -> None:
    if u.group == "noise":
        _write_wav(path, _noise_clip(u))
        return
    raw, speech, noise = (work / f"{u.name}.{k}.wav" for k in ("raw", "speech", "noise"))
    _run(["espeak-ng", *VOICES[u.group], "-w", str(raw), u.text], "espeak-ng")
    # 16 kHz mono, a moment of quiet either side as a microphone records it, a peak level
    _run(
        ["sox", "-R", "-D", str(raw), "-r", str(ASR_RATE), "-c", "1", "-b", "16", str(speech)]
        + ["pad", "0.3", "0.4", "gain", "-n", str(u.level_db)],
        "sox",
    )
    clean = _read_wav(speech)
    rms = float(np.sqrt(np.mean(clean**2)))
    sigma = max(rms / 10 ** (u.snr_db / 20), 1.0)
    _write_wav(noise, np.random.default_rng(u.seed).normal(0, sigma, len(clean)))
    _run(["sox", "-R", "-D", "-m", "-v", "1", str(speech), "-v", "1", str(noise), str(path)], "sox")
    for f in (raw, speech, noise):
        f.unlink()


def make_set(utterances: list[Utterance], jobs: int = 2) -> dict[Utterance, Path]:
    """The WAV file of each utterance, made once per version of the whole set (a subset
    shares the full set's folder)."""
    hostdeps.ensure_commands({"espeak-ng": "espeak-ng", "sox": "sox"}, "the ASR benchmark")
    recipe = json.dumps(
        [VOICES, [u.__dict__ for u in labelled_set()], LEVELS_DB, SNRS_DB, 1], sort_keys=True
    )
    folder = CACHE / hashlib.sha256(recipe.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {u: folder / f"{u.name}.wav" for u in utterances}
    todo = [u for u in utterances if not paths[u].exists()]

    def make_one(u: Utterance) -> None:
        tmp = paths[u].with_suffix(".tmp.wav")
        _make(u, tmp, folder)
        tmp.rename(paths[u])

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(make_one, todo))
    return paths


# ---- hearing it -------------------------------------------------------------------------


@dataclass
class Heard:
    utterance: Utterance
    text: str  # what the storyteller heard ("" when it heard nothing of the grammar)
    refused: bool  # it said sorry (exit status 2)


def hear(storyteller: Path, wav: Path, work: Path, u: Utterance) -> Heard:
    """One --mic-wav run of the real storyteller; a told story is kept to a few tokens."""
    out = work / f"{u.name}.out.wav"
    conf = work / "storyteller.conf"
    cmd = [str(storyteller), "--config", str(conf), "--mic-wav", str(wav), "--wav", str(out)]
    r = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, timeout=120)
    out.unlink(missing_ok=True)
    m = HEARD_RE.search(r.stderr)
    if r.returncode not in (0, 2) or not m:
        raise AsrBenchError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return Heard(u, m.group(1), r.returncode == 2)


def hear_all(
    utterances: list[Utterance],
    storyteller: Path | None = None,
    jobs: int = 2,
    progress: Callable[[Heard], None] | None = None,
) -> list[Heard]:
    paths = make_set(utterances, jobs)
    binary = storyteller or engine.binary("host", "storyteller")
    if not binary.exists():
        raise AsrBenchError(f"{binary} missing: run `invoke engine --target host` first")
    work = CACHE / "runs"
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": DEFAULT_MODEL,
        "tokenizer": DEFAULT_TOKENIZER,
        "asr_dict": DICT,
        "seed": 1,
        "steps": 4,
    }
    (work / "storyteller.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))

    def one(u: Utterance) -> Heard:
        h = hear(binary, paths[u], work, u)
        if progress:
            progress(h)
        return h

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, utterances))


# ---- the figures ------------------------------------------------------------------------


@dataclass
class Score:
    requests: int = 0
    understood: int = 0
    others: int = 0  # out-of-grammar speech and noise
    refused: int = 0
    false_stops: int = 0

    def add(self, h: Heard, things: list[str], names: list[str]) -> None:
        u = h.utterance
        got = None if h.refused else meaning(h.text, things, names)
        wanted = meaning(u.text, things, names) if u.in_grammar else None
        if u.in_grammar:
            self.requests += 1
            self.understood += got == wanted
        else:
            self.others += 1
            self.refused += got is None
        self.false_stops += got == ("stop",) and wanted != ("stop",)

    @staticmethod
    def _pct(k: int, n: int) -> str:
        return f"{k:3d}/{n:<3d} {100 * k / n:5.1f} %" if n else f"{'-':>15}"

    def row(self, label: str) -> str:
        return (
            f"{label:8s} {self._pct(self.understood, self.requests):>17s}   "
            f"{self._pct(self.refused, self.others):>17s}   {self.false_stops:5d}"
        )


def score(heard: Iterable[Heard]) -> dict[str, Score]:
    """Per voice (and "noise"), then "total"."""
    things, names = _subject_words()
    table: dict[str, Score] = {}
    total = Score()
    for h in heard:
        table.setdefault(h.utterance.group, Score()).add(h, things, names)
        total.add(h, things, names)
    table["total"] = total
    return table


def format_table(table: dict[str, Score]) -> str:
    head = f"{'voice':8s} {'requests understood':>17s}   {'others refused':>17s}   false stops"
    return "\n".join([head, *(s.row(k) for k, s in table.items())])


def main(jobs: int = 2, verbose: bool = False) -> dict[str, Score]:
    utterances = labelled_set()
    things, names = _subject_words()

    def show(h: Heard) -> None:
        u = h.utterance
        wanted = meaning(u.text, things, names) if u.in_grammar else None
        got = None if h.refused else meaning(h.text, things, names)
        if verbose or got != wanted:
            mark = "ok " if got == wanted else "BAD"
            print(f"  {mark} {u.group:6s} {u.text!r} -> {h.text!r}", flush=True)

    print(
        f"ASR bench: {len(utterances)} utterances ({len(REQUESTS)} requests and "
        f"{len(OUT_OF_GRAMMAR)} other sentences in each of {len(VOICES)} voices, "
        f"{len(NOISE_CLIPS)} noise clips)",
        flush=True,
    )
    table = score(hear_all(utterances, jobs=jobs, progress=show))
    print(format_table(table))
    return table


if __name__ == "__main__":
    main()

"""Every llama2.c format tells the right story: v1 and unshared classifiers exactly as v0,
Q8_0 close to fp32 (and English on the real model)."""

import pytest

from duo_builder.model.checkpoint import read_checkpoint, unshare_classifier, write_v0, write_v1
from duo_builder.model.convert import convert
from duo_builder.paths import MODELS
from engine_runner import GOLDENS, first_difference, load_goldens, run, run_many

MODEL = MODELS / "stories260K.bin"
TOK = MODELS / "tok512.bin"
SEEDS = range(1, 21)
# Floors for Q8_0's agreement with fp32 -k ref, measured 2026-12-06 (issue 10) with the
# host build: where a story first differs (characters). Both paths are deterministic (exact
# integer sums per group; run.c's order), so these are today's exact values, not estimates.
GREEDY_Q80_DEPARTURE = 429  # stories260K, -t 0: at character 429 of 555
Q80_MEAN_DEPARTURE = {"stories260K": 78.9, "synth15m": 25.3}  # seeds 1-10, 128 steps


def stories(binary, model, tok=TOK, extra=(), seeds=SEEDS, prompt="Once upon a time"):
    cases = [[str(model), "-z", str(tok), "-s", str(s), "-i", prompt, *extra] for s in seeds]
    results = run_many(binary, cases)
    for r in results:
        assert r.returncode == 0, r.stderr
    return [r.stdout.decode() for r in results]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """stories260K as v1, and with an unshared classifier as v0 and v1."""
    d = tmp_path_factory.mktemp("formats")
    ckpt = read_checkpoint(MODEL)
    unshared = unshare_classifier(ckpt)
    return {
        "v1": write_v1(ckpt, d / "v1.bin"),
        "v0-unshared": write_v0(unshared, d / "v0u.bin"),
        "v1-unshared": write_v1(unshared, d / "v1u.bin"),
    }


@pytest.mark.parametrize("variant", ["v1", "v0-unshared", "v1-unshared"])
def test_variant_tells_the_v0_story(host_engine, variants, variant):
    want = stories(host_engine, MODEL, extra=["-k", "ref"])
    got = stories(host_engine, variants[variant], extra=["-k", "ref"])
    assert got == want


@pytest.mark.needs_shared(GOLDENS)
def test_v1_matches_goldens(host_engine, variants):
    cases = [c for c in load_goldens() if c["model"] == "stories260K.bin"]
    args = [[str(variants["v1"]), "-z", str(TOK), *c["args"], "-k", "ref"] for c in cases]
    for case, r in zip(cases, run_many(host_engine, args), strict=True):
        assert r.stdout.decode() == case["stdout"]


@pytest.fixture(scope="module")
def s260_q80(tmp_path_factory):
    return convert(MODEL, tmp_path_factory.mktemp("q80") / "s260-q80.bin", "q80")


def test_q80_greedy_story_is_english(host_engine, s260_q80, capsys):
    """stories260K's hidden_dim 172 is not a multiple of its group size 64: rows of w2
    straddle groups, where runq.c computes garbage. Ours must still tell a story."""
    r = run(host_engine, [str(s260_q80), "-z", str(TOK), "-t", "0", "-i", "Once upon a time"])
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    ref = run(host_engine, [str(MODEL), "-z", str(TOK), "-t", "0", "-i", "Once upon a time"])
    words = text.split()
    common = {"the", "a", "and", "was", "to", "she", "he", "said", "her", "play"}
    assert len(words) > 60
    assert sum(w.lower().strip('.,!"') in common for w in words) > len(words) / 8, text
    diff = first_difference(text, ref.stdout.decode())
    with capsys.disabled():
        print(f"\nstories260K Q8_0 greedy: departs from fp32 at character {diff} of {len(text)}")
    assert diff is None or diff >= GREEDY_Q80_DEPARTURE, f"departs at {diff}"


def test_q80_agreement_with_reference(host_engine, s260_q80, synth15m, tmp_path, capsys):
    """Q8_0 cannot match fp32 byte for byte: print where its stories depart (chars), and
    hold the mean departure (an identical story counts its length) to today's floor."""
    s15_q80 = convert(synth15m, tmp_path / "s15-q80.bin", "q80")
    rows, agreement = [], {}
    for name, fp32, q80, tok in (
        ("stories260K", MODEL, s260_q80, TOK),
        ("synth15m", synth15m, s15_q80, MODELS / "tokenizer.bin"),
    ):
        seeds = range(1, 11)
        ref = stories(host_engine, fp32, tok, ["-k", "ref", "-n", "128"], seeds)
        got = stories(host_engine, q80, tok, ["-n", "128"], seeds)
        diffs = [first_difference(a, b) for a, b in zip(got, ref, strict=True)]
        same = sum(d is None for d in diffs)
        departs = [d for d in diffs if d is not None]
        mean = sum(departs) / len(departs) if departs else float("nan")
        rows.append(f"{name}: {same}/10 identical, others depart at char {mean:.0f} on average")
        lengths = [d if d is not None else len(r) for d, r in zip(diffs, ref, strict=True)]
        agreement[name] = sum(lengths) / len(lengths)
    with capsys.disabled():
        print("\nQ8_0 vs fp32 reference (128 steps, seeds 1-10):\n  " + "\n  ".join(rows))
        print(f"  mean departure: {agreement}")
    for name, floor in Q80_MEAN_DEPARTURE.items():
        assert agreement[name] >= floor, f"{name}: Q8_0 departs earlier than it did: {agreement}"

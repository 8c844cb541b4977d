"""The fp32 reference path must print exactly what fp32 run.c printed (../shared goldens)."""

import pytest

from duo_builder.paths import MODELS
from engine_runner import GOLDENS, first_difference, load_goldens, run_many

pytestmark = pytest.mark.skipif(not GOLDENS.exists(), reason=f"{GOLDENS} not present")
CASES = load_goldens() if GOLDENS.exists() else []
IDS = [f"{c['model']}:{' '.join(c['args'])}" for c in CASES]


def case_args(case: dict, synth15m) -> list[str]:
    models = {
        "stories260K.bin": MODELS / "stories260K.bin",
        "synth15m.bin": synth15m,
        "tok512.bin": MODELS / "tok512.bin",
        "tokenizer.bin": MODELS / "tokenizer.bin",
    }
    return [str(models[case["model"]]), "-z", str(models[case["tokenizer"]]), *case["args"]]


@pytest.fixture(scope="session")
def reference_stories(host_engine, synth15m) -> list[str]:
    results = run_many(host_engine, [[*case_args(c, synth15m), "-k", "ref"] for c in CASES])
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "achieved tok/s: " in r.stderr
    return [r.stdout.decode() for r in results]


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_reference_path_is_byte_exact(reference_stories, index):
    want, got = CASES[index]["stdout"], reference_stories[index]
    assert got == want, f"differs from run.c at character {first_difference(got, want)}"


def test_fast_path_score(host_engine, synth15m, capsys):
    """The default fp32 path sums in another order: report how many goldens it still hits.
    run.c itself built with -Ofast -march=native scores 38/39."""
    results = run_many(host_engine, [case_args(c, synth15m) for c in CASES])
    misses = []
    for case, r in zip(CASES, results, strict=True):
        assert r.returncode == 0, r.stderr
        diff = first_difference(r.stdout.decode(), case["stdout"])
        if diff is not None:
            misses.append(f"{case['model']} {' '.join(case['args'])} (from char {diff})")
    with capsys.disabled():
        print(f"\nfast fp32 path: {len(CASES) - len(misses)}/{len(CASES)} goldens byte-exact")
        for m in misses:
            print(f"  differs: {m}")
    assert len(CASES) - len(misses) >= 38


def test_reference_path_under_sanitizers(asan_engine):
    """The stories260K goldens again, under ASan + UBSan: same bytes, no reports."""
    cases = [c for c in CASES if c["model"] == "stories260K.bin"]
    results = run_many(asan_engine, [[*case_args(c, None), "-k", "ref"] for c in cases])
    for case, r in zip(cases, results, strict=True):
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == case["stdout"]

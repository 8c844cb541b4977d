"""The fp32 reference path must print exactly what fp32 run.c printed (../shared goldens).
Without the goldens every test here is skipped, saying so; in CI (CI=true) they fail."""

import pytest

from duo_builder.paths import MODELS
from engine_runner import GOLDENS, first_difference, load_goldens, run_many

pytestmark = pytest.mark.needs_shared(GOLDENS)
CASES = load_goldens() if GOLDENS.exists() else []
IDS = [f"{c['model']}:{' '.join(c['args'])}" for c in CASES]


def test_goldens_are_present():
    """The parametrized tests below have no cases without the file: this one says why
    (the needs_shared mark skips it, or in CI fails it)."""
    assert len(CASES) == 39, f"{GOLDENS}: {len(CASES)} cases, expected 39"


def case_args(case: dict, synth15m, packed: dict | None = None, fmt: str = "fp32") -> list[str]:
    """The case's command line; with `packed`, the packed `fmt` file in place of the model."""
    models = {
        "stories260K.bin": MODELS / "stories260K.bin",
        "synth15m.bin": synth15m,
        "tok512.bin": MODELS / "tok512.bin",
        "tokenizer.bin": MODELS / "tokenizer.bin",
    }
    model = packed[(case["model"], fmt)] if packed else models[case["model"]]
    return [str(model), "-z", str(models[case["tokenizer"]]), *case["args"]]


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


@pytest.fixture(scope="session")
def packed_reference_stories(host_engine, synth15m, packed_models) -> list[str]:
    cases = [[*case_args(c, synth15m, packed_models), "-k", "ref"] for c in CASES]
    results = run_many(host_engine, cases)
    for r in results:
        assert r.returncode == 0, r.stderr
    return [r.stdout.decode() for r in results]


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_packed_fp32_reference_path_is_byte_exact(packed_reference_stories, index):
    """Row tiles change the memory layout, not the arithmetic: each lane sums its row
    column by column, unfused, as run.c does."""
    want, got = CASES[index]["stdout"], packed_reference_stories[index]
    assert got == want, f"differs from run.c at character {first_difference(got, want)}"


@pytest.fixture(scope="session")
def faithful_stories(host_engine, synth15m, packed_models) -> list[str]:
    cases = [[*case_args(c, synth15m, packed_models, "faithful"), "-k", "faithful"] for c in CASES]
    results = run_many(host_engine, cases)
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "achieved tok/s: " in r.stderr
    return [r.stdout.decode() for r in results]


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_faithful_path_is_byte_exact(faithful_stories, index):
    """-k faithful reads the classifier in int8 and proves run.c's token from certified
    bounds (recomputing exact rows where they cannot): fp32 run.c's story, every byte."""
    want, got = CASES[index]["stdout"], faithful_stories[index]
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

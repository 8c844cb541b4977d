"""The engine's fuzz targets (engine/fuzz/, libFuzzer + ASan/UBSan): every target runs a
short smoke from its seeds and must find nothing; issue 14's reproducers go through their
harnesses cleanly; `invoke fuzz` reports execs and fails on a finding.

The long runs (>= 10 minutes a target) are `invoke fuzz --seconds 600`; CI runs the smoke."""

import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from duo_builder.build import fuzz
from duo_builder.model.convert import convert
from duo_builder.paths import MODELS, REPO

SMOKE_SECONDS = int(os.environ.get("FUZZ_SMOKE_SECONDS", "20"))


@pytest.fixture(scope="module")
def harnesses() -> None:
    fuzz.build()


def test_every_target_smoke(harnesses, tmp_path):
    """Each target for SMOKE_SECONDS from its seeds, two at a time: no crash, sanitizer
    report, leak, timeout or oversized allocation. Corpus, findings and logs go to
    tmp_path: a concurrent `invoke fuzz` keeps its own."""

    def smoke(target: str) -> fuzz.Outcome:
        return fuzz.fuzz(target, SMOKE_SECONDS, progress=False, work=tmp_path)

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(smoke, fuzz.TARGETS))
    for o in outcomes:
        print(fuzz.describe(o))
    found = [fuzz.describe(o) for o in outcomes if o.finding]
    assert not found, "\n".join(found)
    for o in outcomes:
        assert o.execs > 0, f"fuzz_{o.target} ran nothing: see {o.log}"


def test_regression_fixtures_pass_their_harnesses(harnesses):
    """Issue 14's D2 and D3 reproducers (engine/fuzz/regressions/): the config harness's
    range invariants and the WAV harness's malloc limit broke on them before the fixes."""
    for target in ("config", "wav"):
        inputs = sorted((fuzz.REGRESSIONS / target).iterdir())
        assert inputs
        r = fuzz.reproduce(target, inputs)
        assert r.returncode == 0, r.stderr[-3000:]


def test_nan_scale_passes_the_model_harness(harnesses, tmp_path):
    """D1's reproducer: a packed q8 file with one NaN scale. Before the fix it loaded and
    its forward pass converted NaN to int8 (UBSan); now the loader refuses it."""
    q8 = convert(MODELS / "stories260K.bin", tmp_path / "s260-q8.bin", "q8")
    data = bytearray(q8.read_bytes())
    _, _, wq, _ = struct.unpack_from("<iiQQ", data, 128 + 24 * 1)  # shared: wq of layer 0
    data[wq + 512 : wq + 514] = b"\xc0\x7f"
    bad = tmp_path / "nan-scale.bin"
    bad.write_bytes(bytes(data))
    r = fuzz.reproduce("model_packed_q8", [bad])
    assert r.returncode == 0, r.stderr[-3000:]


def test_invoke_fuzz_reports_execs(harnesses):
    r = subprocess.run(
        [sys.executable, "-m", "invoke", "fuzz", "--seconds", "2", "--target", "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "fuzz_config: " in r.stdout and " execs in " in r.stdout, r.stdout
    assert "no findings" in r.stdout


def test_invoke_fuzz_rejects_unknown_target():
    r = subprocess.run(
        [sys.executable, "-m", "invoke", "fuzz", "--target", "recipes-and-more"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown fuzz target 'recipes-and-more'" in lines[0], r.stderr


def test_a_finding_is_reported_with_its_reproducer(harnesses, tmp_path):
    """A harness that breaks is a finding: the outcome names the input libFuzzer saved,
    and fuzz_all fails. A planted defect: a harness aborting on a config's comment line."""
    src = tmp_path / "planted.c"
    src.write_text(
        "#include <stdlib.h>\n#include <stdint.h>\n#include <stddef.h>\n"
        "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {\n"
        "    if (n > 0 && d[0] == '#') abort();\n    return 0;\n}\n"
    )
    exe = tmp_path / "planted"
    subprocess.run(["clang", "-fsanitize=fuzzer", str(src), "-o", str(exe)], check=True)
    o = fuzz.fuzz("config", 30, progress=False, exe=exe, work=tmp_path / "work")
    assert o.finding is not None and o.finding.exists(), o.log.read_text()[-2000:]
    assert o.finding.is_relative_to(tmp_path / "work" / "findings" / "config")
    assert o.finding.read_bytes().startswith(b"#")
    assert "FINDING saved as" in fuzz.describe(o)


def test_harness_sources_have_no_globals():
    """No global mutable state beyond libFuzzer's: the harnesses declare none."""
    for src in (REPO / "engine" / "fuzz").glob("*.c"):
        for line in src.read_text().splitlines():
            if line.startswith("static ") and "(" not in line and "const" not in line:
                raise AssertionError(f"{src.name}: global state: {line}")
    assert Path(fuzz.binary("config")).name == "fuzz_config"

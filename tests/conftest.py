"""Shared fixtures: the test models; the `needs_shared` mark for ../shared reference files."""

import os
from pathlib import Path

import pytest

from duo_builder.build import engine, hostdeps
from duo_builder.fsutil import sha256_file
from duo_builder.model.synthetic import SYNTH15M_SHA256, make_synthetic
from duo_builder.paths import BUILD, MODELS

# CI runs with CI=true and ../shared beside the repository: there a missing reference file
# is a broken set-up, not a reason to pass
IN_CI = os.environ.get("CI") == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_shared(path): reads a ../shared reference file; skipped when it is missing, "
        "except in CI (CI=true), where that fails",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_shared"):
        path = Path(mark.args[0])
        if path.exists():
            continue
        if IN_CI:
            pytest.fail(f"{path} is missing: CI (CI=true) must have ../shared beside the repo")
        pytest.skip(f"{path} is not present (../shared is beside the repository in CI)")


@pytest.fixture(scope="session")
def synth15m() -> Path:
    """The synthetic stories15M-shaped checkpoint, built once and reused while its sha holds."""
    path = BUILD / "test-models" / "synth15m.bin"
    if not (path.exists() and sha256_file(path) == SYNTH15M_SHA256):
        make_synthetic(path)
    return path


@pytest.fixture(scope="session")
def packed_models(synth15m, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """{(model file name, fp32|q8|q4|faithful): packed file} for stories260K and synth15m."""
    from duo_builder.model.convert import convert

    out = tmp_path_factory.mktemp("packed")
    sources = {"stories260K.bin": MODELS / "stories260K.bin", "synth15m.bin": synth15m}
    return {
        (name, fmt): convert(src, out / f"{src.stem}-{fmt}.bin", fmt)
        for name, src in sources.items()
        for fmt in ("fp32", "q8", "q4", "faithful")
    }


@pytest.fixture(scope="session")
def stories260k() -> tuple[Path, Path]:
    """(model, tokenizer) of the real, tiny stories260K checkpoint."""
    return MODELS / "stories260K.bin", MODELS / "tok512.bin"


@pytest.fixture(scope="session")
def host_engine() -> Path:
    """build/host/llama2, freshly built."""
    return engine.build("host")


@pytest.fixture(scope="session")
def asan_engine() -> Path:
    """The engine under AddressSanitizer + UndefinedBehaviorSanitizer (and its C tests,
    build/asan/test_engine, built beside it)."""
    path = engine.build("asan")
    engine.build("asan", check=True)
    return path


@pytest.fixture(scope="session")
def storyteller(host_engine) -> Path:
    """build/host/storyteller (built with the engine), and eSpeak's command line, which
    the tests use to speak requests into WAV files."""
    hostdeps.ensure_commands({"espeak-ng": "espeak-ng"}, "the storyteller tests")
    return engine.binary("host", "storyteller")


# RISC-V builds (gcc 15 in the sid toolchain chroot, made on first use: ~45 s once)
@pytest.fixture(scope="session")
def rv64gc_engine() -> Path:
    """build/rv64gc/llama2: static riscv64, RV64GC, run under qemu-riscv64-static."""
    return engine.build("rv64gc")


@pytest.fixture(scope="session")
def rv64gcv_engine() -> Path:
    """build/rv64gcv/llama2: static riscv64 with RVV 1.0, run under qemu-riscv64-static."""
    return engine.build("rv64gcv")


@pytest.fixture(scope="session")
def c906_engine() -> Path:
    """build/c906/llama2: static, for the Milk-V Duo's C906 (XTheadVector); no QEMU runs it."""
    return engine.build("c906")

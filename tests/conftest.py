"""Shared fixtures: the test models."""

from pathlib import Path

import pytest

from duo_builder import engine
from duo_builder.fsutil import sha256_file
from duo_builder.paths import BUILD, MODELS
from duo_builder.synthetic import SYNTH15M_SHA256, make_synthetic


@pytest.fixture(scope="session")
def synth15m() -> Path:
    """The synthetic stories15M-shaped checkpoint, built once and reused while its sha holds."""
    path = BUILD / "test-models" / "synth15m.bin"
    if not (path.exists() and sha256_file(path) == SYNTH15M_SHA256):
        make_synthetic(path)
    return path


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

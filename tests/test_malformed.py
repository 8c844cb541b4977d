"""Bad input gets one clear line on stderr and exit 1: never a crash, a hang, a sanitizer
report or a partial story. Every case runs the ASan + UBSan build of the engine."""

import struct
from pathlib import Path

import pytest

from duo_builder.model.convert import convert
from duo_builder.paths import MODELS
from engine_runner import run

MODEL = MODELS / "stories260K.bin"
TOK = MODELS / "tok512.bin"
FIELDS = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]


def assert_clean_error(r, mentions: str | Path | None = None) -> None:
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
    assert r.stdout == b"", "nothing may reach stdout"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama2: "), r.stderr
    if mentions is not None:
        assert str(mentions) in lines[0]


@pytest.fixture(scope="module")
def v1_model(tmp_path_factory) -> Path:
    return convert(MODEL, tmp_path_factory.mktemp("v1") / "s260-v1.bin", "v1")


@pytest.fixture(scope="module")
def q80_model(tmp_path_factory) -> Path:
    return convert(MODEL, tmp_path_factory.mktemp("q80") / "s260-q80.bin", "q80")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def with_int(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<i", value) + data[offset + 4 :]


def story_args(model: Path, tok: Path = TOK) -> list[str]:
    return [str(model), "-z", str(tok), "-n", "8", "-s", "1"]


# --- models ---------------------------------------------------------------------------

V0_SIZE = MODEL.stat().st_size


@pytest.mark.parametrize("cut", [0, 1, 4, 27, 28, 29, 1000, V0_SIZE // 2, V0_SIZE - 4, V0_SIZE - 1])
def test_truncated_v0(asan_engine, tmp_path, cut):
    bad = write(tmp_path, "cut.bin", MODEL.read_bytes()[:cut])
    assert_clean_error(run(asan_engine, story_args(bad)), bad)


@pytest.mark.parametrize("extra", [1, 4, 4096])
def test_trailing_bytes(asan_engine, tmp_path, extra):
    bad = write(tmp_path, "long.bin", MODEL.read_bytes() + b"\0" * extra)
    assert_clean_error(run(asan_engine, story_args(bad)), bad)


ABSURD = [(field, value) for field in FIELDS for value in (0, -1, 2**31 - 1, -(2**31))] + [
    ("dim", 2**30),
    ("n_heads", 3),
    ("n_kv_heads", 3),
    ("n_kv_heads", 16),
    ("n_heads", 64),
    ("hidden_dim", 171),
    ("seq_len", 2**20),
]


@pytest.mark.parametrize("field,value", ABSURD, ids=[f"{f}={v}" for f, v in ABSURD])
def test_absurd_v0_header(asan_engine, tmp_path, field, value):
    data = with_int(MODEL.read_bytes(), 4 * FIELDS.index(field), value)
    bad = write(tmp_path, "forged.bin", data)
    assert_clean_error(run(asan_engine, story_args(bad)), bad)


def test_v1_forgeries(asan_engine, tmp_path, v1_model):
    data = v1_model.read_bytes()
    forgeries = {
        "version3": with_int(data, 4, 3),
        "version-1": with_int(data, 4, -1),
        "shared7": data[:36] + b"\x07" + data[37:],
        "unshared": data[:36] + b"\x00" + data[37:],  # then the classifier is missing
        "header-only": data[:256],
        "short-header": data[:100],
        "magic-only": data[:4],
        "cut": data[:-1],
    }
    for name, blob in forgeries.items():
        bad = write(tmp_path, f"{name}.bin", blob)
        assert_clean_error(run(asan_engine, story_args(bad)), bad)


@pytest.mark.parametrize("gs", [0, -64, 7, 2**31 - 1, 1 << 21])
def test_q80_bad_group_size(asan_engine, tmp_path, q80_model, gs):
    data = q80_model.read_bytes()
    bad = write(tmp_path, "gs.bin", data[:37] + struct.pack("<i", gs) + data[41:])
    assert_clean_error(run(asan_engine, story_args(bad)), bad)


def test_q80_truncated(asan_engine, tmp_path, q80_model):
    data = q80_model.read_bytes()
    for cut in (8, 40, 255, 256, 300, len(data) // 2, len(data) - 1):
        bad = write(tmp_path, f"cut{cut}.bin", data[:cut])
        assert_clean_error(run(asan_engine, story_args(bad)), bad)


def test_not_a_model(asan_engine, tmp_path):
    assert_clean_error(run(asan_engine, story_args(tmp_path / "missing.bin")), "missing.bin")
    assert_clean_error(run(asan_engine, story_args(tmp_path)), tmp_path)
    empty = write(tmp_path, "empty.bin", b"")
    assert_clean_error(run(asan_engine, story_args(empty)), empty)
    text = write(tmp_path, "notes.txt", b"once upon a time there was a file " * 10)
    assert_clean_error(run(asan_engine, story_args(text)), text)


def test_ref_path_refuses_q80(asan_engine, q80_model):
    assert_clean_error(run(asan_engine, [*story_args(q80_model), "-k", "ref"]), q80_model)


# --- tokenizers -----------------------------------------------------------------------


def test_wrong_tokenizer_for_model(asan_engine, synth15m):
    big = MODELS / "tokenizer.bin"
    r = run(asan_engine, story_args(MODEL, big))
    assert_clean_error(r, big)
    assert "wrong tokenizer" in r.stderr
    r = run(asan_engine, story_args(synth15m, TOK))
    assert_clean_error(r, TOK)
    assert "wrong tokenizer" in r.stderr


def test_corrupted_tokenizers(asan_engine, tmp_path):
    data = TOK.read_bytes()
    first_len = 4 + 4  # max_token_length, score; then the first token's length
    forged = {
        "empty": b"",
        "max0": with_int(data, 0, 0),
        "maxneg": with_int(data, 0, -1),
        "maxhuge": with_int(data, 0, 10**9),
        "lenneg": with_int(data, first_len, -5),
        "lenhuge": with_int(data, first_len, 2**31 - 1),
        "lenovermax": with_int(data, first_len, 8),
    }
    forged |= {f"cut{n}": data[:n] for n in (2, 4, 6, 12, len(data) // 2, len(data) - 1)}
    for name, blob in forged.items():
        bad = write(tmp_path, f"{name}.tok", blob)
        assert_clean_error(run(asan_engine, story_args(MODEL, bad)), bad)
    assert_clean_error(run(asan_engine, story_args(MODEL, tmp_path / "none.tok")), "none.tok")


# --- prompts and options --------------------------------------------------------------


def test_invalid_utf8_prompt(asan_engine):
    for prompt in (b"Once \xff upon", b"caf\xc3", b"\xc0\xaf", b"\xed\xa0\x80"):
        r = run(asan_engine, [*story_args(MODEL), "-i", prompt])
        assert_clean_error(r)
        assert "UTF-8" in r.stderr


def test_prompt_longer_than_context(asan_engine):
    r = run(asan_engine, [*story_args(MODEL), "-i", "the cat sat. " * 300])
    assert_clean_error(r)
    assert "longer than the model's context of 512" in r.stderr


def test_long_chat_prompt(asan_engine):
    r = run(asan_engine, [*story_args(MODEL), "-m", "chat", "-i", "x" * 600, "-y", "sys"])
    assert_clean_error(r)


@pytest.mark.parametrize(
    "args", [["-t", "warm"], ["-n", "12abc"], ["-s", "99999999999"], ["-k", "turbo"]]
)
def test_bad_option_values(asan_engine, args):
    assert_clean_error(run(asan_engine, [*story_args(MODEL), *args]))


@pytest.mark.parametrize("args", [[], ["-n"], ["--steps", "3"], ["-q", "1"], ["-m", "poem"]])
def test_usage_errors(asan_engine, args):
    r = run(asan_engine, [str(MODEL), *args] if args else [])
    assert r.returncode == 1 and r.stdout == b""
    assert "Usage:" in r.stderr


def test_unwritable_stdout_is_an_error(asan_engine):
    """A story that could not be written is not passed off as told."""
    import subprocess

    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            [str(asan_engine), *story_args(MODEL)], stdout=full, stderr=subprocess.PIPE, timeout=60
        )
    assert p.returncode == 1
    assert b"stdout" in p.stderr

"""llama2.c checkpoint formats on real files: round trips, Q8_0 bit-exactness, malformed input."""

import functools
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from duo_builder.fsutil import sha256_file
from duo_builder.model.checkpoint import (
    FREQ_NAMES,
    V0_ORDER,
    CheckpointError,
    Config,
    QTensor,
    freq_cis,
    quantize_q80,
    read_checkpoint,
    unshare_classifier,
    write_q80,
    write_v0,
    write_v1,
)
from duo_builder.model.convert import convert
from duo_builder.model.synthetic import SYNTH15M_BYTES, SYNTH15M_SHA256, make_synthetic
from duo_builder.paths import SHARED

TOOLS = SHARED / "tools"
needs_shared = pytest.mark.needs_shared(TOOLS)  # conftest.py: fails in CI when missing

STORIES260K_BYTES = 1_056_540
# the weights every checkpoint has, in v0 order (no RoPE tables, no separate classifier)
WEIGHT_NAMES = tuple(n for n in V0_ORDER if n not in (*FREQ_NAMES, "wcls"))


def run_tool(script: str, *args: object) -> None:
    subprocess.run([sys.executable, str(TOOLS / script), *map(str, args)], check=True)


def assert_same_weights(a, b) -> None:
    names = [*WEIGHT_NAMES, *(["wcls"] if not a.config.shared_classifier else [])]
    for name in names:
        assert np.array_equal(a.tensors[name], b.tensors[name]), name


# --------------------------------------------------------------------------- reading


def test_reads_stories260k(stories260k):
    model, _ = stories260k
    ckpt = read_checkpoint(model)
    assert ckpt.format == "v0"
    assert ckpt.config == Config(64, 172, 5, 8, 4, 512, 512, shared_classifier=True)
    assert (ckpt.config.head_size, ckpt.config.kv_dim) == (8, 32)
    assert ckpt.tensors["wk"].shape == (5, 32, 64)
    assert ckpt.tensors["w2"].shape == (5, 64, 172)
    assert ckpt.tensors["freq_cis_real"].shape == (512, 4)
    assert "wcls" not in ckpt.tensors
    assert ckpt.classifier is ckpt.tensors["tok_embeddings"]


def test_tensors_are_read_only_views_of_the_file(stories260k):
    ckpt = read_checkpoint(stories260k[0])
    for t in ckpt.tensors.values():
        assert not t.flags.writeable
        assert isinstance(t.base, np.memmap)


# --------------------------------------------------------------------------- fp32 round trips


def test_v0_round_trip_is_byte_identical(stories260k, tmp_path):
    model, _ = stories260k
    out = write_v0(read_checkpoint(model), tmp_path / "v0.bin")
    assert out.read_bytes() == model.read_bytes()


def test_v1_round_trip_keeps_every_tensor(stories260k, tmp_path):
    src = read_checkpoint(stories260k[0])
    v1 = write_v1(src, tmp_path / "v1.bin")
    back = read_checkpoint(v1)
    assert back.format == "v1"
    assert back.config == src.config
    assert_same_weights(src, back)
    # v1 drops the unused RoPE tables: 256-byte header instead of 28 bytes of ints.
    table_bytes = 2 * 512 * 4 * 4
    assert v1.stat().st_size == STORIES260K_BYTES - 28 + 256 - table_bytes
    assert v1.read_bytes()[:4] == b"24ka"


def test_v0_from_v1_recomputes_rope_tables(stories260k, tmp_path):
    src = read_checkpoint(stories260k[0])
    v1 = read_checkpoint(write_v1(src, tmp_path / "v1.bin"))
    v0 = read_checkpoint(write_v0(v1, tmp_path / "v0.bin"))
    assert v0.format == "v0"
    assert_same_weights(src, v0)
    for name, table in zip(FREQ_NAMES, freq_cis(src.config), strict=True):
        assert np.array_equal(v0.tensors[name], table)
        # stories260K's tables came from torch in fp32: equal to a few ulps only
        np.testing.assert_allclose(v0.tensors[name], src.tensors[name], atol=1e-5)


@pytest.mark.parametrize("fmt", ["v0", "v1", "q80"])
def test_unshared_classifier_round_trip(stories260k, tmp_path, fmt):
    src = read_checkpoint(stories260k[0])
    unshared = unshare_classifier(src)
    assert src.config.shared_classifier  # the source is untouched
    path = convert_checkpoint(unshared, tmp_path / f"u.{fmt}", fmt)
    back = read_checkpoint(path)
    assert not back.config.shared_classifier
    assert back.classifier is back.tensors["wcls"]
    wcls, emb = back.tensors["wcls"], back.tensors["tok_embeddings"]
    if fmt == "q80":
        wcls, emb = wcls.dequantize(), emb.dequantize()
    assert np.array_equal(wcls, emb)
    if fmt == "v0":  # the legacy flag: a negative vocab_size
        assert struct.unpack_from("<i", path.read_bytes(), 20)[0] == -512
        assert path.stat().st_size == STORIES260K_BYTES + 512 * 64 * 4


def convert_checkpoint(ckpt, dst: Path, fmt: str) -> Path:
    return {"v0": write_v0, "v1": write_v1, "q80": write_q80}[fmt](ckpt, dst)


# --------------------------------------------------------------------------- Q8_0


@needs_shared
@pytest.mark.parametrize("unshared", [False, True], ids=["shared", "unshared"])
def test_q80_is_byte_identical_to_shared_tool(stories260k, tmp_path, unshared):
    src = stories260k[0]
    if unshared:
        src = write_v0(unshare_classifier(read_checkpoint(src)), tmp_path / "u.bin")
    ours = write_q80(read_checkpoint(src), tmp_path / "ours.bin")
    run_tool("legacy_to_q80.py", src, tmp_path / "ref.bin")
    assert ours.read_bytes() == (tmp_path / "ref.bin").read_bytes()


@needs_shared
def test_q80_group_size_backoff_matches_shared_tool(synth15m, tmp_path):
    """dim 288 is not a multiple of 64: both back off to 32."""
    ours = convert(synth15m, tmp_path / "ours.bin", "q80")
    run_tool("legacy_to_q80.py", synth15m, tmp_path / "ref.bin")
    assert sha256_file(ours) == sha256_file(tmp_path / "ref.bin")
    assert read_checkpoint(ours).group_size == 32


def test_q80_dequantize_error_is_at_most_half_a_step(stories260k, tmp_path):
    src = read_checkpoint(stories260k[0])
    q = read_checkpoint(write_q80(src, tmp_path / "q.bin"))
    assert (q.format, q.group_size) == ("q80", 64)
    for name in ("rms_att", "rms_ffn", "rms_final"):
        assert np.array_equal(q.tensors[name], src.tensors[name])
    for name in ("tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        qt = q.tensors[name]
        assert isinstance(qt, QTensor)
        assert qt.shape == src.tensors[name].shape and qt.group_size == 64
        err = np.abs(qt.dequantize() - src.tensors[name]).reshape(-1, 64)
        half_step = qt.s.reshape(-1, 1) / 2
        assert np.all(err <= half_step * (1 + 1e-5)), name
        assert np.abs(qt.q).max() == 127


def test_quantize_all_zero_group_gives_zero_scale():
    w = np.zeros((2, 64), dtype=np.float32)
    w[1, :32] = np.linspace(-1, 1, 32)
    qt = quantize_q80(w, 32)
    assert qt.s[0] == 0 and qt.s[1] == 0 and not qt.q[0].any()
    assert np.array_equal(qt.dequantize()[0], w[0])


@pytest.mark.parametrize("writer", [write_v0, write_v1, write_q80])
def test_writers_refuse_a_quantized_source(stories260k, tmp_path, writer):
    q = read_checkpoint(write_q80(read_checkpoint(stories260k[0]), tmp_path / "q.bin"))
    with pytest.raises(CheckpointError, match="fp32"):
        writer(q, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


# --------------------------------------------------------------------------- convert


def test_convert_dispatches_and_returns_dst(stories260k, tmp_path):
    out = convert(stories260k[0], tmp_path / "m.bin", "v1")
    assert out == tmp_path / "m.bin"
    assert read_checkpoint(out).format == "v1"


def test_convert_rejects_unknown_format(stories260k, tmp_path):
    with pytest.raises(ValueError, match="q80, v0, v1"):
        convert(stories260k[0], tmp_path / "m.bin", "gguf")
    assert not (tmp_path / "m.bin").exists()


# --------------------------------------------------------------------------- malformed files


@pytest.fixture(scope="module")
def good_files(tmp_path_factory, stories260k) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("good")
    src = read_checkpoint(stories260k[0])
    return {
        "v0": stories260k[0].read_bytes(),
        "v1": write_v1(src, d / "v1.bin").read_bytes(),
        "q80": write_q80(src, d / "q.bin").read_bytes(),
    }


def patch(data: bytes, offset: int, fmt: str, value: object) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def param_offset(fmt: str, index: int) -> int:
    """Byte offset of header int `index` (0 = dim ... 6 = seq_len)."""
    return 4 * index + (0 if fmt == "v0" else 8)


MALFORMED = {
    "empty": lambda g: b"",
    "v0-shorter-than-header": lambda g: g["v0"][:20],
    "v0-truncated": lambda g: g["v0"][:-1],
    "v0-longer": lambda g: g["v0"] + b"\0",
    "v1-truncated": lambda g: g["v1"][:-4],
    "v1-longer": lambda g: g["v1"] + b"\0" * 4,
    "v1-header-truncated": lambda g: g["v1"][:100],
    "q80-truncated": lambda g: g["q80"][:-1],
    "q80-longer": lambda g: g["q80"] + b"\0",
    "wrong-magic": lambda g: b"ak43" + g["v1"][4:],
    "version-0": lambda g: patch(g["v1"], 4, "<i", 0),
    "version-3": lambda g: patch(g["v1"], 4, "<i", 3),
    "shared-flag-2": lambda g: patch(g["v1"], 36, "<B", 2),
    "group-size-0": lambda g: patch(g["q80"], 37, "<i", 0),
    "group-size-negative": lambda g: patch(g["q80"], 37, "<i", -64),
    "group-size-not-dividing": lambda g: patch(g["q80"], 37, "<i", 7),
    "group-size-wrong-but-dividing": lambda g: patch(g["q80"], 37, "<i", 32),
    "dim-not-multiple-of-heads": lambda g: patch(g["v0"], 12, "<i", 3),
    "heads-not-multiple-of-kv-heads": lambda g: patch(g["v0"], 16, "<i", 3),
    "odd-head-size": lambda g: patch(g["v0"], 12, "<i", 64),
}


def patch_param(good: dict[str, bytes], fmt: str, index: int, value: int) -> bytes:
    return patch(good[fmt], param_offset(fmt, index), "<i", value)


def zero_and_negative_params() -> dict:
    cases = {}
    for fmt in ("v0", "v1", "q80"):
        for index, field in enumerate(("dim", "hidden", "layers", "heads", "kv", "vocab", "seq")):
            for value in (0, -1):
                if fmt == "v0" and field == "vocab" and value == -1:
                    continue  # a negative v0 vocab is legal: it flags an unshared classifier
                cases[f"{fmt}-{field}={value}"] = functools.partial(
                    patch_param, fmt=fmt, index=index, value=value
                )
    return cases


MALFORMED.update(zero_and_negative_params())


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_checkpoint_error(good_files, tmp_path, case):
    path = tmp_path / f"{case}.bin"
    path.write_bytes(MALFORMED[case](good_files))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncation_message_gives_both_sizes(stories260k, tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(stories260k[0].read_bytes()[:1000])
    expected = f"truncated: expected {STORIES260K_BYTES} bytes, got 1000"
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint(path)


def test_huge_header_sizes_do_not_overflow(stories260k, tmp_path):
    """Sizes far past 2**64 bytes are computed exactly and reported, not wrapped around."""
    data = stories260k[0].read_bytes()
    for index in (0, 1, 5, 6):  # dim, hidden_dim, vocab_size, seq_len
        data = patch(data, 4 * index, "<i", 2**30)
    path = tmp_path / "huge.bin"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"truncated: expected \d{20,} bytes"):
        read_checkpoint(path)


def test_negative_v0_vocab_with_missing_classifier_is_truncated(stories260k, tmp_path):
    path = tmp_path / "unshared-without-wcls.bin"
    path.write_bytes(patch(stories260k[0].read_bytes(), 20, "<i", -512))
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)


# --------------------------------------------------------------------------- synthetic models


@needs_shared
def test_synthetic_tiny_matches_shared_tool(tmp_path):
    ours = make_synthetic(tmp_path / "ours.bin", preset="tiny", seed=7, sharpness=3.0)
    run_tool(
        "make_synthetic_model.py", tmp_path / "ref.bin", "--preset", "tiny", "--seed", "7",
        "--sharpness", "3.0",
    )  # fmt: skip
    assert ours.read_bytes() == (tmp_path / "ref.bin").read_bytes()


def test_synthetic_15m_has_the_reference_sha(tmp_path):
    path = make_synthetic(tmp_path / "synth15m.bin")
    assert path.stat().st_size == SYNTH15M_BYTES
    assert sha256_file(path) == SYNTH15M_SHA256
    ckpt = read_checkpoint(path)
    assert ckpt.config == Config(288, 768, 6, 6, 6, 32000, 256, shared_classifier=True)


def test_synth15m_fixture_is_the_reference_file(synth15m):
    assert sha256_file(synth15m) == SYNTH15M_SHA256


def test_synthetic_rejects_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="15m"):
        make_synthetic(tmp_path / "x.bin", preset="7b")

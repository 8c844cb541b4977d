"""The engine's packed format (engine/FORMAT.md): the converter's layout and quantization,
the engine reading it, and every malformed variant refused with one clear line."""

import struct
from pathlib import Path

import numpy as np
import pytest
from test_malformed import assert_clean_error, story_args, with_int, write

from duo_builder.model import packed
from duo_builder.model.checkpoint import Config, read_checkpoint
from duo_builder.model.convert import convert
from duo_builder.paths import MODELS
from engine_runner import first_difference, run

MODEL = MODELS / "stories260K.bin"
TOK = MODELS / "tok512.bin"
STORIES15M = Config(288, 768, 6, 6, 6, 32000, 256)
MIB = 1 << 20


@pytest.fixture(scope="module")
def s260(packed_models) -> dict[str, Path]:
    return {fmt: packed_models[("stories260K.bin", fmt)] for fmt in ("fp32", "q8", "q4")}


# --- the converter -----------------------------------------------------------------------


def test_bytes_per_token_for_the_15m_shape():
    """The issue's budgets (MiB, as 58 MB = stories15M's fp32 file). The layers, the
    classifier and the norms whole, and one 16-row tile of the embedding: the token's row
    shares every cache line with the tile's other rows."""
    q8 = packed.streamed_bytes_per_token(STORIES15M, "q8")
    q4 = packed.streamed_bytes_per_token(STORIES15M, "q4")
    fp32 = packed.streamed_bytes_per_token(STORIES15M, "fp32")
    assert q8 <= 16.1 * MIB and q4 <= 9 * MIB
    tile = 16 * 288
    assert fp32 == (6 * (4 * 288 * 288 + 3 * 288 * 768) + 32000 * 288 + 13 * 288 + tile) * 4
    assert q8 - packed.tile_bytes("q8", 288) == 16_152_192  # 9 groups x 544-byte blocks


@pytest.mark.parametrize("fmt", ["fp32", "q8", "q4", "faithful"])
def test_header_reads_back(fmt):
    """parse_header() (what `invoke bench --riscv` reads) undoes header(), and refuses
    what the engine refuses."""
    head = packed.header(STORIES15M, fmt)
    h = packed.parse_header(head)
    assert (h.config, h.weights) == (STORIES15M, fmt)
    assert [(k, layer, n) for k, layer, _, n in h.table] == [
        (s.kind, s.layer, s.bytes) for s in packed.sections(STORIES15M, fmt)
    ]
    assert packed.header_length(head) == packed.TABLE_OFFSET + len(h.table) * packed.SECTION.size
    with pytest.raises(ValueError, match="tile_rows 8"):
        packed.parse_header(head[:48] + struct.pack("<i", 8) + head[52:])


@pytest.mark.parametrize("fmt", ["fp32", "q8", "q4"])
def test_layout_and_round_trip(s260, fmt):
    src = read_checkpoint(MODEL)
    data = s260[fmt].read_bytes()
    placed, size = packed.layout(src.config, fmt)
    assert len(data) == size and data[:8] == b"DUOPACK\0"
    assert data[: placed[0][1]] == packed.header(src.config, fmt)
    qmax = {"q8": 127, "q4": 7}.get(fmt)
    for s, off in placed:
        assert off % 4096 == 0
        if s.kind in (packed.KIND_NORMS, packed.KIND_EMBEDDING):
            continue
        name = next((n for n, k in packed.LAYER_KINDS.items() if k == s.kind), None)
        want = src.fp32(name)[s.layer] if name else src.fp32("tok_embeddings")
        got = packed.unpack_matrix(data[off : off + s.bytes], fmt, s.rows, s.cols)
        if qmax is None:
            assert np.array_equal(got, want)
            continue
        # half a quantization step per row and group, the scale never below max|w| / qmax
        groups = -(-s.cols // packed.GROUP_SIZE)
        pad = np.zeros((s.rows, groups * packed.GROUP_SIZE), np.float32)
        pad[:, : s.cols] = want
        step = np.abs(pad.reshape(s.rows, groups, -1)).max(axis=2) / qmax
        bound = np.repeat(packed.bf16_round_up(step), packed.GROUP_SIZE, axis=1)[:, : s.cols]
        assert np.all(np.abs(got - want) <= bound / 2 * (1 + 1e-6) + 1e-12)


def test_bf16_scales_round_up():
    s = np.array([0.0, 1.0, 1.0000001, 3.1415927, 1e-30, 65504.0], np.float32)
    up = packed.bf16_round_up(s)
    assert np.all(up >= s) and np.all(up.view(np.uint32) & 0xFFFF == 0)
    assert up[1] == 1.0 and up[2] > 1.0


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp32, q4, q8, q80, v0, v1"):
        convert(MODEL, tmp_path / "x.bin", "q3")


# --- the engine on packed files ---------------------------------------------------------


def test_q8_greedy_follows_fp32(host_engine, s260):
    """Integer sums are exact and scales fixed: q8's greedy story is stories260K's fp32
    one for long stretches (measured: the first 400+ characters)."""
    args = ["-z", str(TOK), "-t", "0", "-n", "200", "-i", "Once upon a time"]
    ref = run(host_engine, [str(MODEL), *args, "-k", "ref"])
    q8 = run(host_engine, [str(s260["q8"]), *args])
    assert ref.returncode == q8.returncode == 0, q8.stderr
    diff = first_difference(q8.stdout.decode(), ref.stdout.decode())
    assert diff is None or diff >= 200, f"departs at {diff}"


@pytest.mark.parametrize("fmt,path", [("q8", "ref"), ("q4", "fast"), ("fp32", "quant")])
def test_wrong_path_for_the_file(host_engine, s260, fmt, path):
    r = run(host_engine, [*story_args(s260[fmt]), "-k", path])
    assert_clean_error(r, "path needs")


def test_q4_story_is_deterministic_across_paths(host_engine, s260):
    a = run(host_engine, story_args(s260["q4"]))
    b = run(host_engine, [*story_args(s260["q4"]), "-k", "quant"])
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.strip()


# --- malformed packed files, under ASan + UBSan -----------------------------------------

TABLE = packed.TABLE_OFFSET


def entry_field(data: bytes, index: int, field: int, value: int) -> bytes:
    """Section `index`'s field 0 kind, 1 layer (u32), 2 offset, 3 bytes (u64)."""
    at = TABLE + index * packed.SECTION.size + (0, 4, 8, 16)[field]
    fmt = "<I" if field < 2 else "<Q"
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


def offset_of(data: bytes, index: int) -> int:
    return struct.unpack_from("<Q", data, TABLE + index * packed.SECTION.size + 8)[0]


MUTATIONS = {
    "magic": lambda d: b"DUOPACX\0" + d[8:],
    "version": lambda d: with_int(d, 8, 2),
    "weights-0": lambda d: with_int(d, 12, 0),
    "weights-9": lambda d: with_int(d, 12, 9),
    "weights-swapped": lambda d: with_int(d, 12, 5 - d[12]),  # q8 <-> q4
    "dim-0": lambda d: with_int(d, 16, 0),
    "layers-huge": lambda d: with_int(d, 24, 2**31 - 1),
    "vocab-negative": lambda d: with_int(d, 36, -512),
    "shared-2": lambda d: with_int(d, 44, 2),
    "unshared-flag": lambda d: with_int(d, 44, 0),
    "tile-rows-8": lambda d: with_int(d, 48, 8),
    "group-64": lambda d: with_int(d, 52, 64),
    "sections-0": lambda d: with_int(d, 56, 0),
    "sections-huge": lambda d: with_int(d, 56, 2**31 - 1),
    "kind-swapped": lambda d: entry_field(d, 1, 0, 4),
    "layer-wrong": lambda d: entry_field(d, 1, 1, 3),
    "offset-misaligned": lambda d: entry_field(d, 2, 2, offset_of(d, 2) + 16),
    "offset-overlap": lambda d: entry_field(d, 2, 2, offset_of(d, 1)),
    "offset-past-end": lambda d: entry_field(d, 3, 2, 1 << 62),
    "bytes-wrong": lambda d: entry_field(d, 3, 3, 4096),
    "trailing": lambda d: d + b"\0",
    "truncated-header": lambda d: d[:100],
    "truncated-table": lambda d: d[: TABLE + 30],
    "truncated-half": lambda d: d[: len(d) // 2],
    "truncated-last-byte": lambda d: d[:-1],
}


@pytest.mark.parametrize("fmt", ["q8", "q4"])
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_malformed_packed(asan_engine, s260, tmp_path, fmt, name):
    bad = write(tmp_path, f"{name}.bin", MUTATIONS[name](s260[fmt].read_bytes()))
    assert_clean_error(run(asan_engine, story_args(bad)), bad)


def test_packed_runs_clean_under_sanitizers(asan_engine, s260):
    for fmt in ("fp32", "q8", "q4"):
        r = run(asan_engine, story_args(s260[fmt]))
        assert r.returncode == 0, r.stderr

"""The engine's packed model format (engine/FORMAT.md): row tiles, page-aligned sections.

A packed matrix keeps TILE_ROWS rows side by side, column after column, so the engine's
vector kernels accumulate TILE_ROWS outputs in the lanes of one register and never reduce.
q8/q4 add one bf16 scale per row and group of GROUP_SIZE columns. A faithful file is the
fp32 one plus an int8 copy of the classifier with the norms that bound its error (section
KIND_CLASSIFIER_Q8), for the engine's certified sampler (-k faithful).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from duo_builder.fsutil import atomic_writer
from duo_builder.model.checkpoint import Checkpoint, CheckpointError, Config, tensor_shapes

MAGIC = b"DUOPACK\0"
VERSION = 1
TILE_ROWS = 16
GROUP_SIZE = 32
PAGE = 4096
TABLE_OFFSET = 128
# magic, version, weights code, the 7 config ints, shared, tile_rows, group_size, n_sections
HEADER = struct.Struct("<8s2i7i4i")
SECTION = struct.Struct("<IIQQ")  # kind, layer, offset, bytes
MAX_SECTIONS = 4096  # far above any real model's 2 + 7 x n_layers + 2: a sanity bound

Weights = Literal["fp32", "q8", "q4", "faithful"]
WEIGHT_CODES: dict[str, int] = {"fp32": 1, "q8": 2, "q4": 3, "faithful": 4}
QMAX = {"q8": 127, "q4": 7}

KIND_NORMS, KIND_EMBEDDING, KIND_CLASSIFIER, KIND_CLASSIFIER_Q8 = 1, 2, 10, 11
FAITHFUL_TRAILER = 16  # section 11 ends with the fp32 bound on the int8 rows' norms
LAYER_KINDS = {"wq": 3, "wk": 4, "wv": 5, "wo": 6, "w1": 7, "w2": 8, "w3": 9}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _align(n: int) -> int:
    return _ceil_div(n, PAGE) * PAGE


def packed_bytes(weights: Weights, rows: int, cols: int) -> int:
    """Bytes of one packed (rows x cols) matrix."""
    tiles = _ceil_div(rows, TILE_ROWS)
    if weights in ("fp32", "faithful"):
        return tiles * cols * TILE_ROWS * 4
    groups = _ceil_div(cols, GROUP_SIZE)
    per_value = 1 if weights == "q8" else 0.5
    return tiles * groups * (int(TILE_ROWS * GROUP_SIZE * per_value) + 2 * TILE_ROWS)


@dataclass(frozen=True)
class Section:
    kind: int
    layer: int
    rows: int  # 0 for the norms section
    cols: int
    bytes: int


def refine_block_bytes(cols: int) -> int:
    """One tile's second level in section 11: two fp32 norms per row, then the residual in
    int4, two columns per byte."""
    return 2 * TILE_ROWS * 4 + _ceil_div(cols, GROUP_SIZE) * TILE_ROWS * GROUP_SIZE // 2


def classifier_q8_first_level(rows: int, cols: int) -> int:
    """Section 11's part every token reads: the q8 blocks, the residual norms, the trailer."""
    return packed_bytes("q8", rows, cols) + _ceil_div(rows, TILE_ROWS) * TILE_ROWS * 4 + 16


def classifier_q8_bytes(rows: int, cols: int) -> int:
    """Section 11 of a faithful file: the q8 blocks, one fp32 residual norm per padded
    row, the 16-byte trailer, then per tile the second level (two fp32 norms per row: the
    residual left and the row it refines; the residual in int4)."""
    return classifier_q8_first_level(rows, cols) + _ceil_div(rows, TILE_ROWS) * refine_block_bytes(
        cols
    )


def sections(cfg: Config, weights: Weights) -> list[Section]:
    """Every section in file order, with its size (offsets come from layout())."""
    shapes = tensor_shapes(cfg)
    norms = (2 * cfg.n_layers * cfg.dim + cfg.dim) * 4
    out = [Section(KIND_NORMS, 0, 0, 0, norms)]

    def matrix(kind: int, layer: int, rows: int, cols: int) -> Section:
        return Section(kind, layer, rows, cols, packed_bytes(weights, rows, cols))

    if not cfg.shared_classifier:
        out.append(matrix(KIND_EMBEDDING, 0, cfg.vocab_size, cfg.dim))
    for layer in range(cfg.n_layers):
        for name, kind in LAYER_KINDS.items():
            _, rows, cols = shapes[name]
            out.append(matrix(kind, layer, rows, cols))
    out.append(matrix(KIND_CLASSIFIER, 0, cfg.vocab_size, cfg.dim))
    if weights == "faithful":
        q8 = classifier_q8_bytes(cfg.vocab_size, cfg.dim)
        out.append(Section(KIND_CLASSIFIER_Q8, 0, cfg.vocab_size, cfg.dim, q8))
    return out


def layout(cfg: Config, weights: Weights) -> tuple[list[tuple[Section, int]], int]:
    """(section, offset) pairs and the file size."""
    secs = sections(cfg, weights)
    offset = _align(TABLE_OFFSET + SECTION.size * len(secs))
    placed = []
    for s in secs:
        placed.append((s, offset))
        end = offset + s.bytes
        offset = _align(end)
    return placed, end


def _group_size(weights: Weights) -> int:
    """The header's group_size: 0 where the matrices are fp32 (a faithful file's int8
    classifier has its groups implied)."""
    return GROUP_SIZE if weights in ("q8", "q4") else 0


def header(cfg: Config, weights: Weights) -> bytes:
    placed, _ = layout(cfg, weights)
    head = HEADER.pack(
        MAGIC,
        VERSION,
        WEIGHT_CODES[weights],
        *cfg.params(),
        int(cfg.shared_classifier),
        TILE_ROWS,
        _group_size(weights),
        len(placed),
    )
    head = head.ljust(TABLE_OFFSET, b"\0")
    for s, offset in placed:
        head += SECTION.pack(s.kind, s.layer, offset, s.bytes)
    return head.ljust(placed[0][1], b"\0")


# --------------------------------------------------------------------------- reading headers


@dataclass(frozen=True)
class Header:
    """What a packed file's header says, checked against this module's layout."""

    config: Config
    weights: Weights
    table: tuple[tuple[int, int, int, int], ...]  # (kind, layer, offset, bytes), if read


def header_length(head: bytes) -> int:
    """Bytes of header and section table, from the first TABLE_OFFSET bytes of a file."""
    n_sections = HEADER.unpack_from(head)[-1]
    if not 0 <= n_sections <= MAX_SECTIONS:
        raise ValueError(f"bad packed header (n_sections {n_sections})")
    return TABLE_OFFSET + n_sections * SECTION.size


def parse_header(head: bytes) -> Header:
    """The header of a packed file whose first bytes are `head`; ValueError names the first
    field that disagrees with FORMAT.md (as the engine would refuse it). The section table
    is checked when `head` holds it (header_length() bytes)."""
    magic, version, code, *ints, shared, tile_rows, group, n_sections = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ValueError("not a packed file (no DUOPACK magic)")
    if version != VERSION:
        raise ValueError(f"packed format version {version}, expected {VERSION}")
    weights = next((w for w, c in WEIGHT_CODES.items() if c == code), None)
    if weights is None:
        raise ValueError(f"packed weights code {code}, expected 1, 2, 3 or 4")
    if shared not in (0, 1):
        raise ValueError(f"shared_classifier is {shared}, expected 0 or 1")
    cfg = Config(*ints, shared_classifier=bool(shared))
    if (tile_rows, group) != (TILE_ROWS, _group_size(weights)):
        raise ValueError(
            f"bad packed header: tile_rows {tile_rows}, group_size {group} "
            f"(expected {TILE_ROWS}, {_group_size(weights)})"
        )
    expected = sections(cfg, weights)
    if n_sections != len(expected):
        raise ValueError(f"packed header lists {n_sections} sections, expected {len(expected)}")
    table: list[tuple[int, int, int, int]] = []
    if len(head) >= TABLE_OFFSET + n_sections * SECTION.size:
        for i, want in enumerate(expected):
            got = SECTION.unpack_from(head, TABLE_OFFSET + i * SECTION.size)
            if (got[0], got[1], got[3]) != (want.kind, want.layer, want.bytes):
                raise ValueError(
                    f"packed section {i} is (kind {got[0]}, layer {got[1]}, {got[3]} bytes), "
                    f"expected (kind {want.kind}, layer {want.layer}, {want.bytes} bytes)"
                )
            table.append(got)
    return Header(cfg, weights, tuple(table))


# --------------------------------------------------------------------------- bytes per token


def tile_bytes(weights: Weights, cols: int) -> int:
    """Bytes of one row tile of a `cols`-column matrix (with its scales)."""
    return packed_bytes(weights, TILE_ROWS, cols)


def streamed_bytes_per_token(cfg: Config, weights: Weights) -> int:
    """Weight bytes one token reads from DRAM: the norms, every layer matrix and the
    classifier, whole, and one tile of the embedding: a tile's rows are interleaved
    column by column, so the current token's row shares every cache line with its tile's
    other rows (and a shared classifier's tile is read again at the end: the C906's 64 KB
    of L1 has long lost it). A faithful file's token reads the int8 classifier (section
    11's first level: the int8 blocks and their norms); the second-level and fp32 tiles
    its sampler reads come on top (only a run knows how many)."""
    skip = {KIND_EMBEDDING} | ({KIND_CLASSIFIER} if weights == "faithful" else set())
    whole = sum(s.bytes for s in sections(cfg, weights) if s.kind not in skip)
    if weights == "faithful":
        whole -= classifier_q8_bytes(cfg.vocab_size, cfg.dim) - classifier_q8_first_level(
            cfg.vocab_size, cfg.dim
        )
    return whole + tile_bytes(weights, cfg.dim)


# --------------------------------------------------------------------------- packing


def _pad(w: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.float32)
    out[: w.shape[0], : w.shape[1]] = w
    return out


def bf16_round_up(s: np.ndarray) -> np.ndarray:
    """The smallest bf16 >= s (s >= 0, finite), as float32: quantized values never clip."""
    bits = np.ascontiguousarray(s, dtype="<f4").view("<u4")
    low = bits & np.uint32(0xFFFF)
    up = (bits & np.uint32(0xFFFF0000)) + np.where(low != 0, np.uint32(0x10000), np.uint32(0))
    return up.astype("<u4").view("<f4")


def quantize_groups(w: np.ndarray, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 (rows, cols_padded), bf16-exact scales float32 (rows, groups)) per row and
    group of GROUP_SIZE columns; zero columns pad the last group."""
    rows, cols = w.shape
    groups = _ceil_div(cols, GROUP_SIZE)
    g = _pad(w, rows, groups * GROUP_SIZE).reshape(rows, groups, GROUP_SIZE)
    qmax = np.float32(QMAX[weights])
    scale = bf16_round_up(np.abs(g).max(axis=2) / qmax)
    safe = np.where(scale == 0, np.float32(1.0), scale)
    q = np.clip(np.round(g / safe[:, :, None]), -qmax, qmax).astype(np.int8)
    return q.reshape(rows, groups * GROUP_SIZE), scale


def pack_matrix(w: np.ndarray, weights: Weights) -> bytes:
    """One matrix in the packed layout of FORMAT.md."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    tiles = _ceil_div(rows, TILE_ROWS)
    if weights in ("fp32", "faithful"):
        t = _pad(w, tiles * TILE_ROWS, cols).reshape(tiles, TILE_ROWS, cols)
        return np.ascontiguousarray(t.transpose(0, 2, 1), dtype="<f4").tobytes()
    q, scale = quantize_groups(w, weights)
    groups = scale.shape[1]
    q = np.concatenate([q, np.zeros((tiles * TILE_ROWS - rows, q.shape[1]), np.int8)])
    scale = np.concatenate([scale, np.zeros((tiles * TILE_ROWS - rows, groups), np.float32)])
    # (tile, group, column-in-group, row-in-tile)
    blocks = q.reshape(tiles, TILE_ROWS, groups, GROUP_SIZE).transpose(0, 2, 3, 1)
    if weights == "q4":
        nib = (blocks.astype(np.uint8) & np.uint8(0x0F)).reshape(
            tiles, groups, GROUP_SIZE // 2, 2, TILE_ROWS
        )
        blocks = (nib[:, :, :, 0, :] | (nib[:, :, :, 1, :] << np.uint8(4))).astype(np.uint8)
    body = np.ascontiguousarray(blocks).view(np.uint8).reshape(tiles, groups, -1)
    bf16 = (np.ascontiguousarray(scale, dtype="<f4").view("<u4") >> np.uint32(16)).astype("<u2")
    scales = np.ascontiguousarray(bf16.reshape(tiles, TILE_ROWS, groups).transpose(0, 2, 1))
    return np.concatenate([body, scales.view(np.uint8)], axis=2).tobytes()


def float32_up(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= x (x float64, finite)."""
    f = np.asarray(x, dtype=np.float64).astype(np.float32)
    return np.where(f.astype(np.float64) < x, np.nextafter(f, np.float32(np.inf)), f)


REFINE_SHIFT = 16  # the second level's step is s / REFINE_SHIFT (exact: s is a bf16)


def _norms_up(v: np.ndarray, rows_padded: int) -> np.ndarray:
    """Per row, the smallest fp32 >= the 2-norm of v's row (float64 sums, with a margin far
    above their rounding), padded with zero rows."""
    margin = 1 + 1e-12
    out = np.zeros(rows_padded, "<f4")
    out[: v.shape[0]] = float32_up(np.sqrt(np.square(v).sum(axis=1)) * margin)
    return out


def classifier_q8(w: np.ndarray) -> bytes:
    """Section 11 of a faithful file (FORMAT.md): the classifier as packed q8; per row an fp32
    upper bound on the 2-norm of its quantization residual w - q s; the fp32 upper bound on
    every int8 row's 2-norm |q s| and 12 zero bytes; then the second level, tile by tile:
    per row fp32 upper bounds on |w - q s - q2 s / 16|_2 and |q s + q2 s / 16|_2, and the
    residual quantized again, q2 = round((w - q s) / (s / 16)) in int4 (clamped to -8..7;
    q4's block layout without scales: the scales are s / 16), one pread per tile. The
    engine bounds every logit's error with the first level and narrows the rows its
    sampler asks for with the second before reading their fp32 tiles."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    tiles = _ceil_div(rows, TILE_ROWS)
    q, scale = quantize_groups(w, "q8")
    groups = scale.shape[1]
    width = groups * GROUP_SIZE
    s_cols = np.repeat(scale.astype(np.float64), GROUP_SIZE, axis=1)  # (rows, width)
    # q s is exact in float64 (8-bit by 8-bit mantissas), and so is w - q s
    what = q.astype(np.float64) * s_cols
    resid = _pad(w, rows, width).astype(np.float64) - what
    step = s_cols / REFINE_SHIFT  # exact: a power of two times a bf16
    safe = np.where(step == 0, 1.0, step)
    q2 = np.where(step == 0, 0.0, np.clip(np.round(resid / safe), -8, 7)).astype(np.int8)
    what2 = what + q2.astype(np.float64) * step  # exact: 12 significant bits times a bf16
    resid2 = resid - q2.astype(np.float64) * step  # exact: w minus a 20-bit-wide value
    padded = tiles * TILE_ROWS
    margin = 1 + 1e-12  # float64 sums and square roots: relative error far below this
    nq = float32_up(np.sqrt(np.square(what).sum(axis=1)).max(initial=0.0) * margin)
    trailer = np.asarray(nq, "<f4").tobytes().ljust(FAITHFUL_TRAILER, b"\0")
    q2p = np.concatenate([q2, np.zeros((padded - rows, width), np.int8)])
    # (tile, group, column pair, row in tile): q4's block layout
    nib = (q2p.astype(np.uint8) & np.uint8(0x0F)).reshape(
        tiles, TILE_ROWS, groups, GROUP_SIZE // 2, 2
    )
    packed2 = (nib[..., 0] | (nib[..., 1] << np.uint8(4))).transpose(0, 2, 3, 1)
    norms2 = np.stack([_norms_up(resid2, padded), _norms_up(what2, padded)])
    norms2 = norms2.reshape(2, tiles, TILE_ROWS).transpose(1, 0, 2).reshape(tiles, -1)
    second = np.concatenate(
        [np.ascontiguousarray(norms2).view(np.uint8), packed2.reshape(tiles, -1)], axis=1
    )
    return b"".join(
        [pack_matrix(w, "q8"), _norms_up(resid, padded).tobytes(), trailer, second.tobytes()]
    )


def write_packed(ckpt: Checkpoint, dst: Path | str, weights: Weights) -> Path:
    """Write `ckpt` (fp32) as a packed file; atomic."""
    if ckpt.format == "q80":
        raise CheckpointError(f"{ckpt.origin}: packing needs an fp32 (v0/v1) checkpoint, got Q8_0")
    cfg = ckpt.config
    for name, shape in tensor_shapes(cfg).items():
        got = tuple(np.shape(ckpt.fp32(name)))
        if got != shape:
            raise CheckpointError(f"{ckpt.origin}: tensor {name} has shape {got}, expected {shape}")
    placed, size = layout(cfg, weights)
    dst = Path(dst)
    with atomic_writer(dst) as f:
        f.write(header(cfg, weights))
        for s, offset in placed:
            f.write(b"\0" * (offset - f.tell()))
            if s.kind == KIND_NORMS:
                for name in ("rms_att", "rms_ffn", "rms_final"):
                    f.write(np.ascontiguousarray(ckpt.fp32(name), dtype="<f4").tobytes())
                continue
            if s.kind == KIND_EMBEDDING:
                w = ckpt.fp32("tok_embeddings")
            elif s.kind in (KIND_CLASSIFIER, KIND_CLASSIFIER_Q8):
                w = ckpt.fp32("tok_embeddings" if cfg.shared_classifier else "wcls")
            else:
                name = next(n for n, k in LAYER_KINDS.items() if k == s.kind)
                w = ckpt.fp32(name)[s.layer]
            data = classifier_q8(w) if s.kind == KIND_CLASSIFIER_Q8 else pack_matrix(w, weights)
            assert len(data) == s.bytes, (s, len(data))
            f.write(data)
        assert f.tell() == size
    return dst


# --------------------------------------------------------------------------- reading back


def unpack_matrix(data: bytes, weights: Weights, rows: int, cols: int) -> np.ndarray:
    """The fp32 values a packed matrix stands for (for tests and fidelity reports)."""
    tiles = _ceil_div(rows, TILE_ROWS)
    if weights in ("fp32", "faithful"):
        t = np.frombuffer(data, "<f4").reshape(tiles, cols, TILE_ROWS).transpose(0, 2, 1)
        return t.reshape(-1, cols)[:rows].copy()
    groups = _ceil_div(cols, GROUP_SIZE)
    raw = np.frombuffer(data, np.uint8).reshape(tiles, groups, -1)
    body, sc = raw[:, :, : -2 * TILE_ROWS], raw[:, :, -2 * TILE_ROWS :]
    if weights == "q4":
        b = body.reshape(tiles, groups, GROUP_SIZE // 2, TILE_ROWS)
        lo = ((b & 0x0F).astype(np.int8) << 4) >> 4
        hi = b.view(np.int8) >> 4
        q = np.stack([lo, hi], axis=3).reshape(tiles, groups, GROUP_SIZE, TILE_ROWS)
    else:
        q = body.view(np.int8).reshape(tiles, groups, GROUP_SIZE, TILE_ROWS)
    s16 = np.ascontiguousarray(sc).view("<u2").reshape(tiles, groups, TILE_ROWS)
    s = (s16.astype("<u4") << np.uint32(16)).view("<f4")
    w = q.astype(np.float32) * s[:, :, None, :]  # (tile, group, col, row)
    w = w.transpose(0, 3, 1, 2).reshape(tiles * TILE_ROWS, groups * GROUP_SIZE)
    return w[:rows, :cols].copy()

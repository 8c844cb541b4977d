"""llama2.c checkpoint files: read v0 (legacy), v1 and v2 (Q8_0); write v0, v1 and Q8_0.

Layouts follow karpathy/llama2.c's export.py (legacy_export, version1_export,
version2_export) and the readers in run.c / runq.c. Everything is little-endian.
Reading maps the file (np.memmap) and returns read-only views into it, so a
large model is never copied just to be inspected or re-written.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
V0_HEADER_BYTES = 28  # 7 int32
V1_HEADER_BYTES = 256  # magic, version, 7 int32, flags, zero padding
Q80_GROUP_SIZE_OFFSET = 37  # 4 magic + 4 version + 28 params + 1 shared byte

Format = Literal["v0", "v1", "q80"]

# Tensor order on disk, per format. "wcls" is present only with an unshared classifier.
V0_ORDER = (
    "tok_embeddings",
    "rms_att",
    "wq",
    "wk",
    "wv",
    "wo",
    "rms_ffn",
    "w1",
    "w2",
    "w3",
    "rms_final",
    "freq_cis_real",
    "freq_cis_imag",
    "wcls",
)
V1_ORDER = (
    "rms_att",
    "rms_ffn",
    "rms_final",
    "tok_embeddings",
    "wq",
    "wk",
    "wv",
    "wo",
    "w1",
    "w2",
    "w3",
    "wcls",
)
Q80_FP32_ORDER = ("rms_att", "rms_ffn", "rms_final")
Q80_QUANT_ORDER = ("tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls")
LAYER_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
FREQ_NAMES = ("freq_cis_real", "freq_cis_imag")
# The 7 header int32s, in file order.
PARAM_NAMES = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


class CheckpointError(BuildError):
    """A checkpoint file (or in-memory checkpoint) is malformed or unusable."""


def _fail(where: object, problem: str) -> CheckpointError:
    return CheckpointError(f"{where}: {problem}")


@dataclass(frozen=True)
class Config:
    """The 7 header integers plus the classifier flag; validated on construction."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True

    def __post_init__(self) -> None:
        for field in PARAM_NAMES:
            value = getattr(self, field)
            # bool is an int subclass but never a valid size
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.head_size % 2:
            raise ValueError(f"head_size {self.head_size} is odd (RoPE rotates pairs)")

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def params(self) -> tuple[int, ...]:
        """The 7 header ints in file order, vocab_size always positive."""
        return tuple(getattr(self, field) for field in PARAM_NAMES)


def tensor_shapes(cfg: Config, *, freq_cis: bool = False) -> dict[str, tuple[int, ...]]:
    """Logical shape of every tensor; per-layer tensors have n_layers as first axis."""
    L, d, h, kv, v = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.kv_dim, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings": (v, d),
        "rms_att": (L, d),
        "rms_ffn": (L, d),
        "rms_final": (d,),
        "wq": (L, d, d),
        "wk": (L, kv, d),
        "wv": (L, kv, d),
        "wo": (L, d, d),
        "w1": (L, h, d),
        "w2": (L, d, h),
        "w3": (L, h, d),
    }
    if freq_cis:
        for name in FREQ_NAMES:
            shapes[name] = (cfg.seq_len, cfg.head_size // 2)
    if not cfg.shared_classifier:
        shapes["wcls"] = (v, d)
    return shapes


@dataclass(frozen=True)
class QTensor:
    """Q8_0 tensor: int8 values and one fp32 scale per group of consecutive values.

    For per-layer tensors q has shape (n_layers, rows, cols) and s (n_layers, groups);
    otherwise q is (rows, cols) and s (groups,). Groups never straddle layers.
    """

    q: np.ndarray
    s: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    @property
    def group_size(self) -> int:
        return self.q.size // self.s.size

    def dequantize(self) -> np.ndarray:
        q = self.q.reshape(-1, self.group_size).astype(np.float32)
        return (q * self.s.reshape(-1, 1)).reshape(self.q.shape)


Tensor = np.ndarray | QTensor


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint. Tensors are fp32 arrays, except Q8_0 matrices in "q80"."""

    config: Config
    format: Format
    tensors: Mapping[str, Tensor]
    group_size: int | None = None  # Q8_0 only
    source: Path | None = None

    @property
    def classifier(self) -> Tensor:
        return self.tensors["tok_embeddings" if self.config.shared_classifier else "wcls"]

    def fp32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if isinstance(t, QTensor):
            raise _fail(self.origin, f"tensor {name} is Q8_0, an fp32 checkpoint is needed")
        return t

    @property
    def origin(self) -> str:
        """The source file, for error messages."""
        return str(self.source) if self.source else "<checkpoint in memory>"


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: Path | str) -> Checkpoint:
    """Parse a v0, v1 or v2 (Q8_0) file; raise CheckpointError if anything is off."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(V1_HEADER_BYTES)
    fmt, cfg, gs, header_bytes = _parse_header(path, head, size)
    _check_size(path, size, header_bytes + _payload_bytes(cfg, fmt, gs))
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = _map_tensors(mm, header_bytes, cfg, fmt, gs)
    return Checkpoint(cfg, fmt, tensors, gs, path)


def parse_header(
    head: bytes, where: object = "llama2.c header"
) -> tuple[Format, Config, int | None]:
    """(format, config, Q8_0 group size) of a llama2.c file whose first bytes are `head`
    (the whole header: 28 bytes for v0, 256 for v1 and v2); CheckpointError names `where`."""
    fmt, cfg, gs, _ = _parse_header(where, head, len(head))
    return fmt, cfg, gs


def _parse_header(path: object, head: bytes, size: int) -> tuple[Format, Config, int | None, int]:
    """Return (format, config, group_size, header length in bytes)."""
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC:
        return _parse_versioned_header(path, head, size)
    if size < V0_HEADER_BYTES:
        raise _fail(path, f"truncated: expected at least {V0_HEADER_BYTES} bytes, got {size}")
    ints = struct.unpack_from("<7i", head)
    vocab = ints[5]
    # v0 signals an unshared classifier with a negative vocab_size.
    cfg = _config(path, ints[:5] + (abs(vocab), ints[6]), shared=vocab > 0)
    return "v0", cfg, None, V0_HEADER_BYTES


def _parse_versioned_header(
    path: object, head: bytes, size: int
) -> tuple[Format, Config, int | None, int]:
    if size < V1_HEADER_BYTES:
        raise _fail(path, f"truncated: expected at least {V1_HEADER_BYTES} bytes, got {size}")
    version = struct.unpack_from("<i", head, 4)[0]
    if version not in (1, 2):
        raise _fail(path, f"unsupported version {version} (expected 1 or 2)")
    ints = struct.unpack_from("<7i", head, 8)
    shared_byte = head[36]
    if shared_byte not in (0, 1):
        raise _fail(path, f"shared-classifier flag is {shared_byte}, expected 0 or 1")
    cfg = _config(path, ints, shared=bool(shared_byte))
    if version == 1:
        return "v1", cfg, None, V1_HEADER_BYTES
    gs = struct.unpack_from("<i", head, Q80_GROUP_SIZE_OFFSET)[0]
    _check_group_size(path, cfg, gs)
    return "q80", cfg, gs, V1_HEADER_BYTES


def _config(path: object, ints: tuple[int, ...], *, shared: bool) -> Config:
    try:
        return Config(*ints, shared_classifier=shared)
    except ValueError as e:
        raise _fail(path, f"bad header: {e}") from None


def _check_group_size(path: object, cfg: Config, gs: int) -> None:
    if gs <= 0:
        raise _fail(path, f"bad header: group_size must be positive, got {gs}")
    for name, shape in tensor_shapes(cfg).items():
        if name in Q80_QUANT_ORDER and _matrix_size(shape) % gs:
            raise _fail(
                path,
                f"bad header: group_size {gs} does not divide the {_matrix_size(shape)} "
                f"values of {name}",
            )


def _check_size(path: Path, size: int, expected: int) -> None:
    if size < expected:
        raise _fail(path, f"truncated: expected {expected} bytes, got {size}")
    if size > expected:
        raise _fail(path, f"too long: expected {expected} bytes, got {size}")


def _matrix_size(shape: tuple[int, ...]) -> int:
    """Values in one quantized unit: a layer's slice for 3-D tensors, else everything."""
    return _prod(shape[1:] if len(shape) == 3 else shape)


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for x in shape:
        n *= x  # Python ints: a hostile header cannot overflow this
    return n


def _fp32_names(cfg: Config, fmt: Format) -> tuple[str, ...]:
    if fmt == "q80":
        return Q80_FP32_ORDER
    order = V0_ORDER if fmt == "v0" else V1_ORDER
    return tuple(n for n in order if n != "wcls" or not cfg.shared_classifier)


def _quant_names(cfg: Config) -> tuple[str, ...]:
    return tuple(n for n in Q80_QUANT_ORDER if n != "wcls" or not cfg.shared_classifier)


def _q80_unit_bytes(n: int, gs: int) -> int:
    return n + 4 * (n // gs)  # int8 values then fp32 scales


def _payload_bytes(cfg: Config, fmt: Format, gs: int | None) -> int:
    shapes = tensor_shapes(cfg, freq_cis=fmt == "v0")
    total = sum(4 * _prod(shapes[n]) for n in _fp32_names(cfg, fmt))
    if fmt == "q80":
        assert gs is not None
        for name in _quant_names(cfg):
            shape = shapes[name]
            units = shape[0] if len(shape) == 3 else 1
            total += units * _q80_unit_bytes(_matrix_size(shape), gs)
    return total


def _map_tensors(
    mm: np.memmap, offset: int, cfg: Config, fmt: Format, gs: int | None
) -> dict[str, Tensor]:
    shapes = tensor_shapes(cfg, freq_cis=fmt == "v0")
    tensors: dict[str, Tensor] = {}
    for name in _fp32_names(cfg, fmt):
        tensors[name] = np.ndarray(shapes[name], dtype="<f4", buffer=mm, offset=offset)
        offset += 4 * _prod(shapes[name])
    if fmt == "q80":
        assert gs is not None
        for name in _quant_names(cfg):
            tensors[name], offset = _map_qtensor(mm, offset, shapes[name], gs)
    return tensors


def _map_qtensor(
    mm: np.memmap, offset: int, shape: tuple[int, ...], gs: int
) -> tuple[QTensor, int]:
    """Per-layer tensors interleave (q, s) per layer: view them with a layer stride."""
    n = _matrix_size(shape)
    unit = _q80_unit_bytes(n, gs)
    if len(shape) == 3:
        layers = shape[0]
        q_strides = (unit, shape[2], 1)
        q = np.ndarray(shape, np.int8, buffer=mm, offset=offset, strides=q_strides)
        s = np.ndarray((layers, n // gs), "<f4", buffer=mm, offset=offset + n, strides=(unit, 4))
        return QTensor(q, s), offset + layers * unit
    q = np.ndarray(shape, np.int8, buffer=mm, offset=offset)
    s = np.ndarray((n // gs,), "<f4", buffer=mm, offset=offset + n)
    return QTensor(q, s), offset + unit


def streamed_bytes_per_token(cfg: Config, fmt: Format, group_size: int | None = None) -> int:
    """Weight bytes one token reads from a `fmt` file: the rmsnorm weights, every layer
    matrix and the classifier, whole, and the current token's embedding row (run.c copies
    one row, runq.c dequantizes one: its int8 values and their groups' scales)."""

    def stored(n: int) -> int:  # bytes of n consecutive values of a matrix
        if fmt != "q80":
            return 4 * n
        assert group_size is not None, "a Q8_0 file has a group size"
        return _q80_unit_bytes(n, group_size)

    shapes = tensor_shapes(cfg)
    norms = sum(4 * _prod(shapes[name]) for name in Q80_FP32_ORDER)  # fp32 in every format
    layers = sum(stored(_prod(shapes[name])) for name in LAYER_MATRICES)
    return norms + layers + stored(cfg.vocab_size * cfg.dim) + stored(cfg.dim)


# --------------------------------------------------------------------------- building


def freq_cis(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The legacy format's unused RoPE tables, computed as make_synthetic_model.py does."""
    hs = cfg.head_size
    pos = np.arange(cfg.seq_len, dtype=np.float64)[:, None]
    freqs = 1.0 / (10000.0 ** (np.arange(0, hs, 2, dtype=np.float64) / hs))
    ang = pos * freqs[None, :]
    return np.cos(ang).astype("<f4"), np.sin(ang).astype("<f4")


def unshare_classifier(ckpt: Checkpoint) -> Checkpoint:
    """A copy whose classifier is a separate tensor (a copy of the embedding)."""
    if not ckpt.config.shared_classifier:
        return ckpt
    tensors = dict(ckpt.tensors)
    emb = tensors["tok_embeddings"]
    if isinstance(emb, QTensor):
        tensors["wcls"] = QTensor(emb.q.copy(), emb.s.copy())
    else:
        tensors["wcls"] = np.array(emb, dtype="<f4")
    cfg = dataclasses.replace(ckpt.config, shared_classifier=False)
    return dataclasses.replace(ckpt, config=cfg, tensors=tensors)


def quantize_q80(w: np.ndarray, group_size: int) -> QTensor:
    """Symmetric int8 in [-127, 127], one scale per group; bit-identical to legacy_to_q80.py.

    A 3-D (n_layers, rows, cols) input is quantized layer by layer (groups never straddle).
    """
    w = np.asarray(w)
    flat = w.astype(np.float32).reshape(-1, group_size)
    scale = (np.abs(flat).max(axis=1) / np.float32(127.0)).astype(np.float32)
    # An all-zero group would divide by zero; it quantizes to zeros with scale 0.
    safe = np.where(scale == 0, np.float32(1.0), scale)
    q = np.round(flat / safe[:, None]).astype(np.int8).reshape(w.shape)
    s_shape = (w.shape[0], -1) if w.ndim == 3 else (-1,)
    return QTensor(q, scale.astype("<f4").reshape(s_shape))


# --------------------------------------------------------------------------- writing


def v0_header(cfg: Config) -> bytes:
    params = list(cfg.params())
    if not cfg.shared_classifier:
        params[5] = -params[5]  # v0's only way to say "unshared classifier"
    return struct.pack("<7i", *params)


def _versioned_header(cfg: Config, version: int, group_size: int | None = None) -> bytes:
    head = struct.pack("<Ii", MAGIC, version) + struct.pack("<7i", *cfg.params())
    head += struct.pack("<B", int(cfg.shared_classifier))
    if group_size is not None:
        head += struct.pack("<i", group_size)
    return head.ljust(V1_HEADER_BYTES, b"\0")


def _require_fp32(ckpt: Checkpoint, writer: str) -> None:
    """Writers need fp32 weights and tensors whose shapes match the config."""
    if ckpt.format == "q80":
        raise _fail(ckpt.origin, f"{writer} needs an fp32 (v0/v1) checkpoint, got Q8_0")
    for name, shape in tensor_shapes(ckpt.config).items():
        got = tuple(np.shape(ckpt.fp32(name)))
        if got != shape:
            raise _fail(ckpt.origin, f"tensor {name} has shape {got}, expected {shape}")


def _write_fp32(f: BinaryIO, t: np.ndarray) -> None:
    f.write(np.ascontiguousarray(t, dtype="<f4").data)


def write_v0(ckpt: Checkpoint, dst: Path | str) -> Path:
    """Legacy llama2.c file (what run.c reads); reproduces a v0 source byte for byte."""
    _require_fp32(ckpt, "write_v0")
    cfg = ckpt.config
    tensors = dict(ckpt.tensors)
    if not all(name in tensors for name in FREQ_NAMES):
        tensors.update(zip(FREQ_NAMES, freq_cis(cfg), strict=True))
    for name in FREQ_NAMES:
        if tuple(np.shape(tensors[name])) != (cfg.seq_len, cfg.head_size // 2):
            raise _fail(ckpt.origin, f"tensor {name} has shape {np.shape(tensors[name])}")
    dst = Path(dst)
    with atomic_writer(dst) as f:
        f.write(v0_header(cfg))
        for name in _fp32_names(cfg, "v0"):
            _write_fp32(f, tensors[name])
    return dst


def write_v1(ckpt: Checkpoint, dst: Path | str) -> Path:
    """llama2.c version-1 file: 256-byte header, fp32 weights, no RoPE tables."""
    _require_fp32(ckpt, "write_v1")
    dst = Path(dst)
    with atomic_writer(dst) as f:
        f.write(_versioned_header(ckpt.config, 1))
        for name in _fp32_names(ckpt.config, "v1"):
            _write_fp32(f, ckpt.fp32(name))
    return dst


def q80_group_size(dim: int, group_size: int = 64) -> int:
    """export.py's backoff: halve the group size until it divides dim."""
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    while dim % group_size:
        group_size //= 2
    return group_size


def write_q80(ckpt: Checkpoint, dst: Path | str, group_size: int = 64) -> Path:
    """llama2.c version-2 Q8_0 file (what runq.c reads), identical to legacy_to_q80.py."""
    _require_fp32(ckpt, "write_q80")
    cfg = ckpt.config
    gs = q80_group_size(cfg.dim, group_size)
    dst = Path(dst)
    with atomic_writer(dst) as f:
        f.write(_versioned_header(cfg, 2, gs))
        for name in Q80_FP32_ORDER:
            _write_fp32(f, ckpt.fp32(name))
        for name in _quant_names(cfg):
            w = ckpt.fp32(name)
            # One tensor (or one layer) at a time keeps the float temporaries small.
            for unit in w if w.ndim == 3 else [w]:
                qt = quantize_q80(unit, gs)
                f.write(np.ascontiguousarray(qt.q).data)
                f.write(np.ascontiguousarray(qt.s).data)
    return dst

"""Deterministic random-weight checkpoints in llama2.c's legacy (v0) format.

A port of ../shared/tools/make_synthetic_model.py that writes byte-identical
files: same presets, seed, draw order and float32 arithmetic. The 15m preset
has exactly stories15M's shape (the real file cannot be downloaded here).
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np

from duo_builder.fsutil import atomic_writer
from duo_builder.model.checkpoint import Config, freq_cis, v0_header

# name: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
PRESETS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "15m": (288, 768, 6, 6, 6, 32000, 256),
    "42m": (512, 1376, 8, 8, 8, 32000, 1024),
    "110m": (768, 2048, 12, 12, 12, 32000, 1024),
    "tiny": (64, 172, 2, 4, 2, 32000, 128),
}

SYNTH15M_SHA256 = "9252b06156dcd8690db62d4b2d0256b98eecc272fa12f0b440df4d9d8e29aa17"
SYNTH15M_BYTES = 60_816_028


def preset_config(preset: str) -> Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    return Config(*PRESETS[preset], shared_classifier=True)


def make_synthetic(
    dst: Path | str, preset: str = "15m", seed: int = 1234, sharpness: float = 8.0
) -> Path:
    """Write the synthetic checkpoint to `dst` (atomically) and return its path."""
    cfg = preset_config(preset)
    dst = Path(dst)
    with atomic_writer(dst) as f:
        _write_weights(f, cfg, np.random.default_rng(seed), sharpness)
    return dst


def _write_weights(f: BinaryIO, cfg: Config, rng: np.random.Generator, sharpness: float) -> None:
    """Each tensor is drawn and written before the next: the draw order is the file order."""
    L, d, h, kv = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.kv_dim

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype("<f4")

    def put(t: np.ndarray) -> None:
        f.write(np.ascontiguousarray(t, dtype="<f4").data)

    f.write(v0_header(cfg))
    put(normal((cfg.vocab_size, d), 0.05))  # tok_embeddings, also the classifier
    put(1.0 + normal((L, d), 0.1))  # rms_att
    put(normal((L, d, d), 0.08))  # wq
    put(normal((L, kv, d), 0.08))  # wk
    put(normal((L, kv, d), 0.08))  # wv
    put(normal((L, d, d), 0.05))  # wo
    put(1.0 + normal((L, d), 0.1))  # rms_ffn
    put(normal((L, h, d), 0.06))  # w1
    put(normal((L, d, h), 0.04))  # w2
    put(normal((L, h, d), 0.06))  # w3
    # Sharpness scales every logit: larger means more peaked next-token distributions.
    put(np.float32(sharpness) * (1.0 + normal((d,), 0.1)))  # rms_final
    for table in freq_cis(cfg):  # unused by run.c but part of the legacy layout
        put(table)

"""`invoke bench --riscv`'s configurations and its table (engine/CYCLE_MODEL.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from duo_builder.bench.riscv import count
from duo_builder.bench.riscv.count import (
    PLUGIN_SRC,
    QEMU,
    STORY_ARGS,
    Configuration,
    Measurement,
    measure,
)
from duo_builder.bench.riscv.cycles import (
    CLOCK_HZ,
    CONTEST_CYCLES_PER_TOKEN,
    CONTEST_INSNS_PER_TOKEN,
    CONTEST_TOK_S,
    DRAM_BYTES_PER_S,
    FIRST,
    LAST,
    SCALAR_REFERENCES,
    TOKENS,
    RiscvBenchError,
    calibrate,
    modelled_tok_s,
)
from duo_builder.paths import BUILD, ENGINE_SRC, LLAMA_TOKENIZER


def default_configurations(
    extra_models: Iterable[Path] = (), model: Path | None = None, target: str = "rv64gcv"
) -> list[Configuration]:
    """fp32 -k ref, fp32 -k fast, its v2 Q8_0 conversion -k q80 and its packed fp32 (-k ref
    and fast), q8 and q4 conversions (synth15m unless `model` is given), then each extra
    model on the engine's default path."""
    from duo_builder.bench.contest import converted, default_model

    fp32 = model or default_model()
    where = BUILD / "bench" if model else fp32.parent
    where.mkdir(parents=True, exist_ok=True)
    formats = ("q80", "fp32", "q8", "q4", "faithful")
    files = {fmt: converted(fp32, fmt, where) for fmt in formats}
    name = fp32.stem
    configs = [
        Configuration(f"{name} fp32 -k ref", fp32, "ref", target),
        Configuration(f"{name} fp32 -k fast", fp32, "fast", target),
        Configuration(f"{name} v2 Q8_0 -k q80", files["q80"], "q80", target),
        Configuration(f"{name} packed fp32 -k ref", files["fp32"], "ref", target),
        Configuration(f"{name} packed fp32 fast", files["fp32"], None, target),
        Configuration(f"{name} packed q8", files["q8"], None, target),
        Configuration(f"{name} packed q4", files["q4"], None, target),
        Configuration(f"{name} faithful", files["faithful"], "faithful", target),
    ]
    for m in extra_models:
        if not m.is_file():
            raise RiscvBenchError(f"model {m} does not exist")
        configs.append(Configuration(m.name, m, None, target))
    return configs


def report(ms: Sequence[Measurement], out: TextIO | None = None) -> None:
    """The table, with the calibration and the issue's scalar reference lines."""

    def say(s: str = "") -> None:
        print(s, file=out or sys.stdout)

    q80 = next(m for m in ms if m.config.kpath == "q80")
    k = calibrate(q80.ratio)
    base = q80.tok_s(k)
    say()
    say(
        f"calibration: the contest's best entry ran {CONTEST_INSNS_PER_TOKEN / 1e6:.1f} M "
        f"insns/token at {CONTEST_TOK_S} tok/s = {CONTEST_CYCLES_PER_TOKEN / 1e6:.2f} M "
        f"cycles/token; assuming its units/insn equals our q80 path's ({q80.ratio:.3f}):"
    )
    say(f"  k = {k:.3f} cycles per unit  (engine/CYCLE_MODEL.md)")
    say(
        f"positions {FIRST}-{LAST - 1} ({TOKENS} tokens), {' '.join(STORY_ARGS)}; "
        f"Duo = 1 / max(bytes / {DRAM_BYTES_PER_S / 1e9:.1f} GB/s, k x units / "
        f"{CLOCK_HZ / 1e9:.0f} GHz); RSS: host build, contest run (256 steps)"
    )
    head = (
        f"{'config':<32}{'insns/tok':>11}{'units/tok':>11}{'kernels':>9}{'MB/tok':>8}"
        f"{'RSS MB':>8}{'Duo tok/s':>11}{'bound':>7}{'x q80':>7}"
    )
    say(head)
    say("-" * len(head))
    for m in ms:
        cyc = m.cycles(k)
        bound = "mem" if m.bytes.total / DRAM_BYTES_PER_S > cyc / CLOCK_HZ else "cpu"
        tps = m.tok_s(k)
        say(
            f"{m.config.label[:31]:<32}{m.insns / 1e6:>10.2f}M{m.units / 1e6:>10.2f}M"
            f"{100 * m.kernel_share():>8.1f}%{m.bytes.total / 1e6:>8.2f}{m.rss_kb / 1024:>8.1f}"
            f"{tps:>11.1f}{bound:>7}{tps / base:>7.2f}"
        )
    fp32_bytes = next((m.bytes.total for m in ms if m.bytes.format in ("v0", "v1")), None)
    say("reference lines (the issue's counts; scalar, so units = insns):")
    for label, insns, fmt in SCALAR_REFERENCES:
        b = q80.bytes.total if fmt == "q80" else fp32_bytes
        tps = f"{modelled_tok_s(b, k * insns):>11.1f}" if b else f"{'':>11}"
        say(f"  {label:<38}{insns / 1e6:>10.1f}M{'':>11}{'':>9}{'':>8}{'':>8}{tps}")
    say(
        f"  {'contest best entry (XTheadVector)':<38}{CONTEST_INSNS_PER_TOKEN / 1e6:>10.1f}M"
        f"{'':>36}{CONTEST_TOK_S:>11.1f}  (measured on a Duo)"
    )
    for m in ms:
        if m.unknown > 0.001 * m.insns:
            say(
                f"note: {m.config.label}: {m.unknown:.0f} insns/token at addresses objdump "
                "did not list (weighed 1)"
            )
    kernels = sorted({s for m in ms for s in m.kernels})
    say(f"kernel symbols counted: {', '.join(kernels) or 'none'}")


def main(
    models: Sequence[str] = (),
    model: str | None = None,
    tokenizer: str | None = None,
    target: str = "rv64gcv",
) -> None:
    tok = Path(tokenizer) if tokenizer else LLAMA_TOKENIZER
    configs = default_configurations(
        [Path(m) for m in models], Path(model) if model else None, target
    )
    print(
        f"riscv bench: {len(configs)} configurations x 2 runs (-n {FIRST}, -n {LAST}) under "
        f"{QEMU} with {PLUGIN_SRC.relative_to(ENGINE_SRC.parent)}, target {target}"
    )
    try:
        measured = measure(configs, tok)
    except count.Interrupted as e:  # the table of what finished, then the one-line error
        if e.partial:
            report(e.partial)
        raise
    report(measured)

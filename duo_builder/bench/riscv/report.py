"""`invoke bench --riscv`'s configurations and its tables (engine/CYCLE_MODEL.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from duo_builder.bench.riscv import count
from duo_builder.bench.riscv.calibration import (
    PR4_TOK_S,
    Calibration,
    calibrate,
    residuals,
)
from duo_builder.bench.riscv.count import (
    PLUGIN_SRC,
    STORY_ARGS,
    Configuration,
    Measurement,
    measure,
)
from duo_builder.bench.riscv.cycles import (
    FIRST,
    LAST,
    PESSIMISTIC,
    SCENARIOS,
    SD_BYTES_PER_S,
    SD_REQUEST_S,
    TOKENS,
    RiscvBenchError,
)
from duo_builder.paths import BUILD, ENGINE_SRC, LLAMA_TOKENIZER

TOP_FUNCTIONS = 5


# The default configurations' keys, for --only
KEYS = ("fp32-ref", "fp32-fast", "q80", "pfp32-ref", "pfp32", "q8", "q4", "faithful")


def default_configurations(
    extra_models: Iterable[Path] = (),
    model: Path | None = None,
    target: str = "rv64gcv",
    only: Sequence[str] = (),
) -> list[Configuration]:
    """fp32 -k ref, fp32 -k fast, its v2 Q8_0 conversion -k q80 and its packed fp32 (-k ref
    and fast), q8 and q4 conversions (synth15m unless `model` is given), then each extra
    model on the engine's default path; with `only`, those of KEYS alone."""
    from duo_builder.bench.contest import converted, default_model

    wrong = [k for k in only if k not in KEYS]
    if wrong:
        raise RiscvBenchError(f"--only {','.join(wrong)}: not one of {','.join(KEYS)}")
    keep = set(only or KEYS)
    fp32 = model or default_model()
    where = BUILD / "bench" if model else fp32.parent
    where.mkdir(parents=True, exist_ok=True)
    needs = {"q80": "q80", "pfp32-ref": "fp32", "pfp32": "fp32", "q8": "q8", "q4": "q4"}
    needs["faithful"] = "faithful"
    formats = dict.fromkeys(fmt for k, fmt in needs.items() if k in keep)
    files = {fmt: converted(fp32, fmt, where) for fmt in formats}
    name = fp32.stem
    every = {
        "fp32-ref": lambda: Configuration(f"{name} fp32 -k ref", fp32, "ref", target),
        "fp32-fast": lambda: Configuration(f"{name} fp32 -k fast", fp32, "fast", target),
        "q80": lambda: Configuration(f"{name} v2 Q8_0 -k q80", files["q80"], "q80", target),
        "pfp32-ref": lambda: Configuration(
            f"{name} packed fp32 -k ref", files["fp32"], "ref", target
        ),
        "pfp32": lambda: Configuration(f"{name} packed fp32 fast", files["fp32"], None, target),
        "q8": lambda: Configuration(f"{name} packed q8", files["q8"], None, target),
        "q4": lambda: Configuration(f"{name} packed q4", files["q4"], None, target),
        "faithful": lambda: Configuration(
            f"{name} faithful", files["faithful"], "faithful", target
        ),
    }
    configs = [every[k]() for k in KEYS if k in keep]
    for m in extra_models:
        if not m.is_file():
            raise RiscvBenchError(f"model {m} does not exist")
        configs.append(Configuration(m.name, m, None, target))
    return configs


def report_calibration(cal: Calibration, say) -> None:  # noqa: ANN001
    say(
        f"calibration: PR4 (2023 winner, {PR4_TOK_S} tok/s on a Duo) {cal.insns / 1e6:.2f} M "
        f"insns/token = {cal.cycles / 1e6:.2f} M modelled cycles, {cal.bytes / 1e6:.2f} MB/token;"
        " factor f per scenario (cycles = f x modelled):"
    )
    say("  " + "   ".join(f"{s.label}: f = {cal.factors[s]:.3f}" for s in SCENARIOS))
    say("residual (measured on a Duo, not fitted; modelled - measured):")
    for r in residuals(cal):
        errs = "  ".join(
            f"{s.label} {r.modelled_s[s] * 1e3:.2f} ms ({100 * r.error(s):+.0f}%)"
            for s in SCENARIOS
        )
        say(f"  {r.label} {r.measured_s * 1e3:.2f} ms: {errs}")


def report(ms: Sequence[Measurement], out: TextIO | None = None) -> None:
    """The calibration and its residual, the table of every configuration in the four
    scenarios, the top functions, and storage."""

    def say(s: str = "") -> None:
        print(s, file=out or sys.stdout)

    cal = calibrate()
    say()
    report_calibration(cal, say)
    counted = sorted({m.counted_by for m in ms})
    say(
        f"positions {FIRST}-{LAST - 1} ({TOKENS} tokens), {' '.join(STORY_ARGS)}; counted by "
        f"{', '.join(counted)}; Duo s/token = f x cycles / 1 GHz (+ or max) bytes / bandwidth"
        " + storage; RSS: host build, contest run"
    )
    say(
        f"tok/s in four scenarios; the range runs from {PESSIMISTIC.label} (pessimistic, the "
        "issue's targets) to 1.4 GB/s max"
    )
    head = f"{'config':<30}{'Minsn':>7}{'Mcyc':>7}{'kern':>6}{'MB/tok':>7}{'RSS':>6}{'stor ms':>8}"
    head += "".join(f"{s.label:>15}" for s in SCENARIOS) + f"{'bound':>6}"
    say(head)
    say("-" * len(head))
    for m in ms:
        st = m.storage_s()
        cells = "".join(f"{m.tok_s(s, cal.factors[s]):>15.1f}" for s in SCENARIOS)
        bound = PESSIMISTIC.bound(cal.factors[PESSIMISTIC] * m.cycles, m.bytes.total)
        say(
            f"{m.config.label[:29]:<30}{m.insns / 1e6:>7.2f}{m.cycles / 1e6:>7.2f}"
            f"{100 * m.kernel_share():>5.0f}%{m.bytes.total / 1e6:>7.2f}{m.rss_kb / 1024:>6.1f}"
            f"{'-' if st is None else f'{st * 1e3:.1f}':>8}{cells}{bound:>6}"
        )
    say(
        f"{'PR4 (measured 24.3 on a Duo)':<30}{cal.insns / 1e6:>7.2f}{cal.cycles / 1e6:>7.2f}"
        f"{'':>6}{cal.bytes / 1e6:>7.2f}{'':>6}{'-':>8}"
        + "".join(f"{cal.tok_s(s):>15.1f}" for s in SCENARIOS)
        + "  (fitted)"
    )
    say("Mcyc: modelled cycles before f; kern: share in obj/kernels*.o and matvec_*")
    for m in ms:
        if m.storage is None:
            say(f"storage: {m.config.label}: not measured (invoke bench --storage)")
        else:
            say(
                f"storage: {m.config.label}: {m.storage.read_bytes_per_token / 1e3:.1f} kB, "
                f"{m.storage.reads_per_token:.1f} reads, {m.storage.major_faults_per_token:.1f} "
                f"major faults per token ({m.storage.guest_mem_mb} MB guest, "
                f"{m.storage.source}): {m.storage_s() * 1e3:.1f} ms at "
                f"{SD_BYTES_PER_S / 1e6:.0f} MB/s + {SD_REQUEST_S * 1e3:.1f} ms per request"
            )
    f = cal.factors[PESSIMISTIC]
    say(f"top functions, M cycles/token at f = {f:.3f} ({PESSIMISTIC.label}) and share:")
    for m in ms:
        tops = ", ".join(
            f"{name} {f * c / 1e6:.2f} ({100 * c / m.cycles:.0f}%)"
            for name, c in m.top_functions(TOP_FUNCTIONS)
        )
        say(f"  {m.config.label}: {tops}")
    for m in ms:
        if m.unknown > 0.001 * m.insns:
            say(
                f"note: {m.config.label}: {m.unknown:.0f} insns/token at addresses objdump "
                "did not list (costed 1 cycle)"
            )


def main(
    models: Sequence[str] = (),
    model: str | None = None,
    tokenizer: str | None = None,
    target: str = "",
    qemu: str = "",
    plugin: str = "",
    only: Sequence[str] = (),
) -> None:
    """Count the default configurations (those of `only`, and `models`) and print the
    tables. `target` defaults to c906 with `qemu` (an XTheadVector QEMU), else to the
    rv64gcv proxy."""
    target = target or ("c906" if qemu else "rv64gcv")
    count.runners([target], qemu, plugin)  # a wrong --qemu/--plugin: one line, before builds
    tok = Path(tokenizer) if tokenizer else LLAMA_TOKENIZER
    configs = default_configurations(
        [Path(m) for m in models], Path(model) if model else None, target, only
    )
    by = f"{qemu} -cpu {count.C906_CPU}" if qemu else f"{count.QEMU} ({target} proxy)"
    print(
        f"riscv bench: {len(configs)} configurations x 2 runs (-n {FIRST}, -n {LAST}) under "
        f"{by} with {PLUGIN_SRC.relative_to(ENGINE_SRC.parent)}, target {target}"
    )
    try:
        measured = measure(configs, tok, qemu=qemu, plugin=plugin)
    except count.Interrupted as e:  # the table of what finished, then the one-line error
        if e.partial:
            report(e.partial)
        raise
    report(measured)

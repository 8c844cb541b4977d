"""`invoke bench --riscv`: instruments that predict the Milk-V Duo's speed without a board.

For each configuration (a model file, a compute path, a riscv64 engine build) the engine
runs twice under QEMU with our counting plugin (engine/tools/qemu_insn_plugin.c): Debian's
qemu-riscv64 for the rv64gcv proxy, or with --qemu an external XTheadVector QEMU
(-cpu c906fdv) for the real c906 build. `-n 64` and `-n 192`, same seed: the difference /
128 is one token at positions 64-191. Each executed address is costed by the cycle model v2
of engine/CYCLE_MODEL.md (by class, SEW and LMUL, from the C906's figures), the model is
calibrated on the 2023 winner's measured histogram (one factor per scenario), and a Duo
token takes its compute and DRAM time (overlapping or not, at 1.0 and 1.4 GB/s) plus its
storage time.

Not a test: nothing here asserts a speed; it prints a table.

cycles.py is the model (pure), calibration.py the fit and its residual, count.py makes the
measurements, storage_reads.py brings the storage measurement, report.py the tables.
"""

from duo_builder.bench.riscv.cycles import RiscvBenchError


def main(*args, **kwargs) -> None:  # noqa: ANN002, ANN003 - report.main's signature
    """report.main(), imported when called (the model's modules import without QEMU)."""
    from duo_builder.bench.riscv.report import main as run

    run(*args, **kwargs)


__all__ = ["RiscvBenchError", "main"]

"""`invoke bench --riscv`: instruments that predict the Milk-V Duo's speed without a board.

For each configuration (a model file, a compute path, a riscv64 engine build) the engine
runs twice under bookworm's dynamic qemu-riscv64 (7.2, the one that loads TCG plugins)
with our counting plugin (engine/tools/qemu_insn_plugin.c): `-n 64` and `-n 192`, same
seed, so the first 64 positions are the same work and the difference / 128 is what one
token costs at positions 64-191, start-up excluded. Each executed address is weighed by
the cycle model of engine/CYCLE_MODEL.md (the static binary disassembled by the toolchain
chroot's objdump), the model is calibrated on the 2023 contest's best entry, and a Duo
token takes the longer of its compute time and its DRAM time (weights and KV cache
streamed per token, from the file's header).

Not a test: nothing here asserts a speed; it prints a table.

cycles.py is the model (pure), count.py makes the measurements, report.py the table.
"""

from duo_builder.bench.riscv.cycles import RiscvBenchError
from duo_builder.bench.riscv.report import main

__all__ = ["RiscvBenchError", "main"]

"""RISC-V builds of the engine (gcc 15 in the sid toolchain chroot) under QEMU user mode.

rv64gc and rv64gcv run under qemu-riscv64-static: the reference path must print run.c's
goldens byte for byte, the fast and Q8_0 paths are compared with the host build. The C906
build (XTheadVector) has no emulator: it must compile to a static riscv64 ELF, and its own
code must not read `vlenb` (a CSR XTheadVector lacks)."""

import re
import struct
from pathlib import Path

import pytest

from duo_builder.build import engine, toolchain
from duo_builder.model.convert import convert
from duo_builder.paths import BUILD, MODELS
from engine_runner import GOLDENS, first_difference, load_goldens, run_many

QEMU_TARGETS = ("rv64gc", "rv64gcv")
CASES = [c for c in load_goldens() if c["model"] == "stories260K.bin"] if GOLDENS.exists() else []
MODEL, TOKENIZER = MODELS / "stories260K.bin", MODELS / "tok512.bin"
SEEDS = (1, 2, 3)
# The fast fp32 paths may fuse and drift from the host's stories; measured 2026-12-06
# (issue 10) under QEMU, rv64gc and rv64gcv, plain and packed fp32: 3/3 seeds alike
FAST_SAME_AS_HOST = 3
# Fused multiply-adds, scalar and vector: none may appear outside the per-ISA kernels
FMA = re.compile(r"\s(v?fn?m(add|sub|acc|sac)|vfwn?m(acc|sac))\.")
FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")


def built(request: pytest.FixtureRequest, name: str) -> Path:
    return request.getfixturevalue(f"{name}_engine")


def story_args(model: Path, seed: int) -> list[str]:
    return [str(model), "-z", str(TOKENIZER), "-t", "1.0", "-p", "0.9", "-s", str(seed)]


def objdump(*args: str) -> str:
    p = toolchain.run_in_chroot([toolchain.OBJDUMP, *args])
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def stories260k_q80() -> Path:
    return convert(MODEL, BUILD / "test-models" / "stories260K-q80.bin", "q80")


@pytest.mark.needs_shared(GOLDENS)
@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_reference_path_reproduces_goldens_under_qemu(request, name):
    binary = built(request, name)
    cases = [[str(MODEL), "-z", str(TOKENIZER), *c["args"], "-k", "ref"] for c in CASES]
    results = run_many(binary, cases, prefix=engine.runner(name))
    misses = []
    for case, r in zip(CASES, results, strict=True):
        assert r.returncode == 0, r.stderr
        diff = first_difference(r.stdout.decode(), case["stdout"])
        if diff is not None:
            misses.append(f"{' '.join(case['args'])} (from char {diff})")
    assert not misses, f"{name}: {len(misses)}/{len(CASES)} goldens differ: {misses}"


@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_reference_code_is_not_contracted(request, name):
    """-ffp-contract=off must hold for everything but the per-ISA kernels: no fused
    multiply-add in the reference path's objects (gcc contracts by default in GNU C)."""
    built(request, name)
    objs = sorted(p for p in (engine.build_dir(name) / "obj").glob("*.o"))
    ours = [p for p in objs if not p.name.startswith(("kernels_", "test_"))]
    ours.append(engine.build_dir(name) / "obj" / "kernels_ref.o")
    fused = [
        line.strip() for line in objdump("-d", *map(str, ours)).splitlines() if FMA.search(line)
    ]
    assert not fused, f"{name}: fused multiply-adds outside the kernels: {fused[:5]}"


@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_fast_and_q80_paths_match_host(request, name, host_engine, stories260k_q80, capsys):
    """The same seeds on the host build and under QEMU: the Q8_0 stories must match; the
    fast fp32 path may contract (fused multiply-adds) and drift, so its agreement is
    reported and held to today's floor."""
    binary = built(request, name)
    cases = [story_args(MODEL, s) for s in SEEDS] + [story_args(stories260k_q80, s) for s in SEEDS]
    host = run_many(host_engine, cases)
    got = run_many(binary, cases, prefix=engine.runner(name))
    for r in host + got:
        assert r.returncode == 0, r.stderr
    fast_diffs = [
        f"seed {s} (from char {first_difference(g.stdout.decode(), h.stdout.decode())})"
        for s, g, h in zip(SEEDS, got[: len(SEEDS)], host[: len(SEEDS)], strict=True)
        if g.stdout != h.stdout
    ]
    with capsys.disabled():
        same = len(SEEDS) - len(fast_diffs)
        print(f"\n{name} fast fp32 path: {same}/{len(SEEDS)} stories as the host's")
        for d in fast_diffs:
            print(f"  differs: {d}")
    assert same >= FAST_SAME_AS_HOST, f"{name} fast fp32: {same}/{len(SEEDS)}: {fast_diffs}"
    for s, g, h in zip(SEEDS, got[len(SEEDS) :], host[len(SEEDS) :], strict=True):
        assert g.stdout == h.stdout, (
            f"{name} q80 seed {s} differs from the host "
            f"at char {first_difference(g.stdout.decode(), h.stdout.decode())}"
        )


@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_packed_paths_match_host(request, name, host_engine, packed_models, capsys):
    """Packed q8/q4 compute the reference's arithmetic bit for bit on every build (the rvv
    kernels included), and packed fp32 under -k ref sums in run.c's order: their stories
    must be the host's byte for byte, for stories260K (rows and columns that fill neither
    tiles nor groups) and a few tokens of synth15m (stories15M's shapes: two-tile passes,
    2000 classifier tiles). Packed fp32 -k fast fuses, so its agreement is reported and
    held to today's floor."""
    binary = built(request, name)
    s260 = {f: packed_models[("stories260K.bin", f)] for f in ("fp32", "q8", "q4")}
    exact = {
        f"stories260K {f} seed {s}": story_args(s260[f], s) for f in ("q8", "q4") for s in SEEDS
    }
    exact |= {
        f"stories260K fp32 -k ref seed {s}": [*story_args(s260["fp32"], s), "-k", "ref"]
        for s in SEEDS
    }
    tok15m = str(MODELS / "tokenizer.bin")
    for f in ("q8", "q4"):
        model = str(packed_models[("synth15m.bin", f)])
        exact[f"synth15m {f}"] = [model, "-z", tok15m, "-n", "12", "-s", "1"]
    fast = {f"fp32 -k fast seed {s}": [*story_args(s260["fp32"], s), "-k", "fast"] for s in SEEDS}
    cases = [*exact.values(), *fast.values()]
    host = run_many(host_engine, cases)
    got = run_many(binary, cases, prefix=engine.runner(name))
    for r in host + got:
        assert r.returncode == 0, r.stderr
    labels = [*exact, *fast]
    diffs = {
        label: first_difference(g.stdout.decode(), h.stdout.decode())
        for label, g, h in zip(labels, got, host, strict=True)
        if g.stdout != h.stdout
    }
    with capsys.disabled():
        same = len(fast) - sum(label in diffs for label in fast)
        print(f"\n{name} packed fp32 -k fast: {same}/{len(fast)} stories as the host's")
    assert same >= FAST_SAME_AS_HOST, f"{name} packed fp32 -k fast: {same}/{len(fast)}: {diffs}"
    wrong = {label: d for label, d in diffs.items() if label in exact}
    assert not wrong, f"{name}: packed stories differ from the host's (from char): {wrong}"
    assert all(g.stdout for g in got), "empty stories"


def test_c_unit_tests_under_qemu():
    engine.build("rv64gcv", check=True)


def elf_header(path: Path) -> dict:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    ei_class, ei_data = data[4], data[5]
    e_machine = struct.unpack_from("<H", data, 18)[0]
    e_flags = struct.unpack_from("<I", data, 48)[0]
    e_phoff = struct.unpack_from("<Q", data, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    p_types = [struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)]
    return {
        "class": ei_class,
        "data": ei_data,
        "machine": e_machine,
        "flags": e_flags,
        "interp": 3 in p_types,  # PT_INTERP: dynamically linked
    }


def test_c906_build_is_a_static_riscv64_elf(c906_engine):
    h = elf_header(c906_engine)
    assert (h["class"], h["data"], h["machine"]) == (2, 1, 243), h  # ELF64, LE, EM_RISCV
    assert h["flags"] & 0x6 == 0x4, h  # EF_RISCV_FLOAT_ABI_DOUBLE: lp64d
    assert not h["interp"], "llama2 for the C906 must be linked statically"


def test_c906_code_reads_no_vlenb(c906_engine, capsys):
    """XTheadVector has no vlenb CSR: our own functions must not read it (gcc's spills do).
    Reports the th.v* instructions gcc emitted (today: inline string/memory operations)."""
    obj = engine.build_dir("c906") / "obj"
    symbols = toolchain.run_in_chroot(
        [
            "riscv64-linux-gnu-nm",
            "--defined-only",
            *map(str, sorted(p for p in obj.glob("*.o") if not p.name.startswith("test_"))),
        ]
    ).stdout
    ours = {f[2] for f in map(str.split, symbols.splitlines()) if len(f) == 3 and f[1] in "tT"}
    assert "main" in ours and "llama2_generate" in ours, sorted(ours)[:20]
    function, thv, vlenb = None, {}, {}
    for line in objdump("-d", str(c906_engine)).splitlines():
        if m := FUNCTION.match(line):
            function = m["name"]
        elif "\tth.v" in line:
            thv[function] = thv.get(function, 0) + 1
        elif "vlenb" in line:
            vlenb[function] = vlenb.get(function, 0) + 1
    in_ours = {f: n for f, n in vlenb.items() if f in ours}
    assert not in_ours, f"our code reads vlenb (a vector spill?): {in_ours}"
    with capsys.disabled():
        ours_thv = sum(n for f, n in thv.items() if f in ours)
        print(
            f"\nc906: {sum(thv.values())} th.v* instructions ({ours_thv} in the engine's own "
            f"functions: {', '.join(sorted(f for f in thv if f in ours))}); "
            f"vlenb reads only in {', '.join(sorted(vlenb)) or 'none'}"
        )


def test_runners():
    assert engine.runner("host") == []
    assert engine.runner("rv64gcv")[1:3] == ["-cpu", "rv64,v=true,vlen=128,vext_spec=v1.0,Zfh=true"]
    assert engine.runner("rv64gc")[1:] == ["-cpu", "rv64"]
    assert "-L" not in engine.runner("rv64gcv", "storyteller")  # static: no sysroot
    with pytest.raises(engine.EngineError, match="XTheadVector"):
        engine.runner("c906")


def test_toolchain_manifest():
    m = toolchain.manifest()
    assert m["compiler"].startswith("riscv64-linux-gnu-gcc-15 ")
    assert all(m["packages"].values()), m["packages"]
    assert m["made"] and m["suite"] == "sid"

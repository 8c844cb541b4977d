"""Building the C engine for a target and running it.

Host targets build with the host's compiler. RISC-V targets build inside the Debian sid
toolchain chroot (duo_builder.build.toolchain: gcc 15, the only gcc that compiles the C906's
XTheadVector soundly) and run under qemu-riscv64-static where QEMU can emulate them. Every
riscv64 program is linked statically: the storyteller against the alsa-lib, espeak-ng and
pocketsphinx built from pinned sources (duo_builder.build.payload_libs), so the same
binaries run on any image (Debian's glibc, the Duo's musl) without a library of theirs."""

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from duo_builder.build import payload_libs, toolchain
from duo_builder.build.hostdeps import HostDependencyError, ensure_packages
from duo_builder.errors import BuildError, run
from duo_builder.paths import BUILD, ENGINE_SRC, REPO


class EngineError(BuildError):
    """A build or run of the engine failed; the message says what and how to fix it."""


@dataclass(frozen=True)
class Target:
    """How to compile the engine for one machine: compiler, flags, kernel set, programs.

    `chroot` targets are built inside the sid riscv64 toolchain chroot; `qemu` names the
    toolchain.qemu_command profile that runs their programs ("" = runs on this machine,
    unless `no_runner` says why nothing can)."""

    name: str
    cc: str = "cc"
    cflags: str = "-O3"
    ldflags: str = ""
    static_ldflags: str = ""  # llama2 and the C tests only: they need just libc + libm
    kernels: str = "portable"
    programs: tuple[str, ...] = ("llama2",)
    ar: str = "ar"
    pkg_config: str = "pkg-config"
    chroot: bool = False
    qemu: str = ""
    no_runner: str = ""
    about: str = ""


# gcc leaves float-cast-overflow out of "undefined" (clang does not): a NaN -> int8
# conversion (issue 14, D1) went unreported without it
SANITIZE = "-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all"
STORYTELLER = ("llama2", "storyteller", "fidelity")
# What a host build of the storyteller compiles against (Debian packages)
STORYTELLER_HOST_PACKAGES = (
    "pkg-config",
    "libespeak-ng-dev",
    "libpocketsphinx-dev",
    "pocketsphinx-en-us",
    "libasound2-dev",
)

RV64_ABI = "-mabi=lp64d"
C906_MARCH = (
    "rv64gc_zfh_xtheadvector_xtheadba_xtheadbb_xtheadbs_xtheadcmo_xtheadcondmov"
    "_xtheadfmemidx_xtheadmac_xtheadmemidx_xtheadmempair_xtheadsync"
)


def _riscv(
    name: str,
    march: str,
    *,
    about: str,
    qemu: str = "",
    tune: str = "",
    no_runner: str = "",
    programs: tuple[str, ...] = ("llama2",),
    kernels: str = "portable",
) -> Target:
    """A riscv64 target: gcc 15 in the toolchain chroot, every program linked statically
    (the storyteller against payload_libs' static alsa-lib, espeak-ng and pocketsphinx,
    which pkg-config finds there alone)."""
    return Target(
        name,
        cc=toolchain.GCC,
        cflags=" ".join(f for f in ("-O3", f"-march={march}", tune, RV64_ABI) if f),
        ldflags="-static",
        static_ldflags="-static",
        programs=programs,
        kernels=kernels,
        ar=toolchain.AR,
        pkg_config=f"{toolchain.PKG_CONFIG} --static",
        chroot=True,
        qemu=qemu,
        no_runner=no_runner,
        about=about,
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("host", programs=STORYTELLER, about="this machine, portable kernels"),
        Target(
            "host-static",
            static_ldflags="-static",
            about="this machine, llama2 linked statically as on the Duo: memory figures",
        ),
        Target(
            "asan",
            cflags=f"-O1 -g -fno-omit-frame-pointer {SANITIZE}",
            ldflags=SANITIZE,
            programs=STORYTELLER,
            about="this machine under AddressSanitizer + UndefinedBehaviorSanitizer",
        ),
        _riscv("rv64gc", "rv64gc", qemu="rv64gc", about="riscv64 RV64GC, no vector (static)"),
        _riscv(
            "rv64gcv",
            "rv64gcv_zfh",  # Zfh as the C906: its binary16 KV cache converts in hardware
            qemu="rv64gcv",
            programs=("llama2", "storyteller"),
            kernels="rvv",
            about="riscv64 with RVV 1.0 and Zfh (static llama2 and storyteller)",
        ),
        _riscv(
            "c906",
            C906_MARCH,
            tune="-mtune=thead-c906",
            kernels="rvv",
            programs=("llama2", "storyteller"),
            no_runner=(
                "no Debian QEMU runs XTheadVector (the C906's pre-ratification RVV 0.7.1): "
                "run build/c906/llama2 on the Milk-V Duo itself"
            ),
            about="Milk-V Duo's T-Head C906, XTheadVector + T-Head extensions (static "
            "llama2 and storyteller)",
        ),
    )
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise EngineError(f"unknown engine target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def build_dir(name: str) -> Path:
    return BUILD / name


def binary(name: str = "host", program: str = "llama2") -> Path:
    return build_dir(name) / program


def runner(name: str, program: str = "llama2") -> list[str]:
    """The command prefix that runs target `name`'s programs on this machine: [] for host
    targets, qemu-riscv64-static for riscv64 ones (all static: no sysroot). EngineError
    when nothing here can run them."""
    return _runner(target(name), program)


def _runner(t: Target, program: str) -> list[str]:
    if t.no_runner:
        raise EngineError(f"cannot run the {t.name!r} engine here: {t.no_runner}")
    if not t.qemu:
        return []
    try:
        return toolchain.qemu_command(t.qemu)
    except toolchain.ToolchainError as e:
        raise EngineError(str(e)) from None


def build(
    name: str = "host", *, check: bool = False, jobs: int | None = None, cflags: str = ""
) -> Path:
    """Compile the engine for target `name` into build/<name>/; with check, also run the
    C-level tests (under QEMU for riscv64 targets). Returns the llama2 binary's path (the
    other programs are beside it). `cflags` (a recipe's engine.cflags) go after the
    target's; such a build gets its own directory, build/<name>-<hash of cflags>/, since
    make does not rebuild objects when only the flags change."""
    t = target(name)
    if cflags.strip():
        digest = hashlib.sha256(cflags.strip().encode()).hexdigest()[:8]
        t = replace(t, name=f"{name}-{digest}", cflags=f"{t.cflags} {cflags.strip()}")
    if t.chroot:
        return _build_in_chroot(t, check=check, jobs=jobs)
    for tool in ("make", t.cc.split()[0]):
        if shutil.which(tool) is None:
            raise EngineError(
                f"building the engine for {name!r} needs {tool!r}, which is not on PATH "
                f"(on Debian: apt-get install build-essential)"
            )
    if "storyteller" in t.programs:
        try:
            ensure_packages(STORYTELLER_HOST_PACKAGES, f"building the storyteller for {name!r}")
        except HostDependencyError as e:
            raise EngineError(str(e)) from None
    cmd = _make_command(t, jobs)
    if check:
        cmd.append("check")
    run(cmd, what=f"building the engine for {t.name!r}", error=EngineError)
    return binary(t.name)


def _make_command(t: Target, jobs: int | None) -> list[str]:
    cmd = [
        "make",
        "-C",
        str(ENGINE_SRC),
        f"-j{jobs or os.cpu_count() or 1}",
        f"O={build_dir(t.name)}",
        f"CC={t.cc}",
        f"CFLAGS={t.cflags}",
        f"LDFLAGS={t.ldflags}",
        f"STATIC_LDFLAGS={t.static_ldflags}",
        f"KERNELS={t.kernels}",
    ]
    if t.chroot:  # the host build keeps the Makefile's own defaults for these
        cmd += [f"AR={t.ar}", f"PKG_CONFIG={t.pkg_config}", f"PROGRAMS={' '.join(t.programs)}"]
    else:
        cmd.append(f"PROGRAMS={' '.join(t.programs)}")
    cmd.append("all")
    return cmd


def _build_in_chroot(t: Target, *, check: bool, jobs: int | None) -> Path:
    try:
        toolchain.ensure_sid_chroot()
    except toolchain.ToolchainError as e:
        raise EngineError(
            f"building the engine for {t.name!r} needs the riscv64 toolchain: {e}"
        ) from None
    env: dict[str, str] = {}
    if "storyteller" in t.programs:
        try:
            libs = payload_libs.ensure()
        except toolchain.ToolchainError as e:
            raise EngineError(f"building the storyteller for {t.name!r}: {e}") from None
        env = libs.pkg_config_env()
        _relink_when_libs_change(t, libs.key)
    cmd = _make_command(t, jobs)
    # The C tests are riscv64 programs: build them in the chroot, run them under QEMU here
    checks = ["test_engine", "test_softmax"] + (
        ["test_storyteller", "test_prompts"] if "storyteller" in t.programs else []
    )
    if check:
        cmd += [str(binary(t.name, c)) for c in checks]
    try:
        result = toolchain.run_in_chroot(cmd, cwd_in_repo=REPO, env=env)
    except toolchain.ToolchainError as e:
        raise EngineError(f"building the engine for {t.name!r} failed: {e}") from None
    if result.returncode != 0:
        raise EngineError(
            f"building the engine for {t.name!r} (in the toolchain chroot "
            f"{toolchain.ROOT}) failed:\n{_tail(result)}"
        )
    if check:
        prefix = _runner(t, "llama2")
        for c in checks:
            run([*prefix, binary(t.name, c)], what=f"the {t.name!r} engine's C test {c}",
                error=EngineError)  # fmt: skip
    return binary(t.name)


def _relink_when_libs_change(t: Target, key: str) -> None:
    """make does not see the payload libraries change (their directory is keyed by their
    inputs): drop the storyteller's objects and binary when the key differs from the last
    build's, so the next make compiles against the new headers and relinks."""
    stamp = build_dir(t.name) / ".payload-libs"
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    shutil.rmtree(build_dir(t.name) / "obj" / "storyteller", ignore_errors=True)
    for program in ("storyteller", "test_storyteller", "test_prompts"):
        (build_dir(t.name) / program).unlink(missing_ok=True)
    build_dir(t.name).mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")


def _tail(result: subprocess.CompletedProcess, lines: int = 25) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])

"""Building the C engine for a target and running it."""

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .paths import BUILD, ENGINE_SRC


class EngineError(Exception):
    """A build or run of the engine failed; the message says what and how to fix it."""


@dataclass(frozen=True)
class Target:
    """How to compile the engine for one machine: compiler, flags, kernel set."""

    name: str
    cc: str = "cc"
    cflags: str = "-O3"
    ldflags: str = ""
    kernels: str = "portable"
    about: str = ""


SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all"

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("host", about="this machine, portable kernels"),
        Target(
            "asan",
            cflags=f"-O1 -g -fno-omit-frame-pointer {SANITIZE}",
            ldflags=SANITIZE,
            about="this machine under AddressSanitizer + UndefinedBehaviorSanitizer",
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


def build(name: str = "host", *, check: bool = False, jobs: int | None = None) -> Path:
    """Compile the engine for target `name` into build/<name>/; with check, also run the
    C-level tests. Returns the llama2 binary's path."""
    t = target(name)
    for tool in ("make", t.cc.split()[0]):
        if shutil.which(tool) is None:
            raise EngineError(
                f"building the engine for {name!r} needs {tool!r}, which is not on PATH "
                f"(on Debian: apt-get install build-essential)"
            )
    out = build_dir(name)
    cmd = [
        "make",
        "-C",
        str(ENGINE_SRC),
        f"-j{jobs or os.cpu_count() or 1}",
        f"O={out}",
        f"CC={t.cc}",
        f"CFLAGS={t.cflags}",
        f"LDFLAGS={t.ldflags}",
        f"KERNELS={t.kernels}",
        "all",
    ]
    if check:
        cmd.append("check")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise EngineError(f"building the engine for {name!r} failed:\n{tail}")
    return binary(name)

"""Task hygiene, through the real `python -m invoke` command line: help flags never start
work, bad values are one-line errors, prompts of any text reach the QEMU guest."""

import base64
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from duo_builder.bench.riscv import count
from duo_builder.image.bases import debian as qi

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def all_tasks() -> dict:
    sys.path.insert(0, str(ROOT))
    try:
        tasks = importlib.import_module("tasks")
    finally:
        sys.path.remove(str(ROOT))
    from invoke import Collection

    return Collection.from_module(tasks).tasks


def test_no_option_of_any_task_is_behind_h():
    tasks = all_tasks()
    assert {"bench", "story", "qemu", "flash", "deploy"} <= set(tasks)
    for name, t in tasks.items():
        for arg in t.get_arguments():
            assert "h" not in arg.names, f"invoke {name} -h would set --{arg.name}"


def test_bench_has_only_long_options():
    for arg in all_tasks()["bench"].get_arguments():
        assert all(len(n) > 1 for n in arg.names), arg.names


@pytest.mark.parametrize("name", ["bench", "story", "qemu", "image", "fuzz"])
def test_dash_h_shows_help_and_starts_nothing(name):
    p = invoke(name, "-h")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"Usage: inv[oke] [--core-opts] {name}")
    assert "Options:" in p.stdout


@pytest.mark.parametrize("name", ["deploy", "model"])
def test_dash_h_in_place_of_a_required_value_is_one_line(name):
    p = invoke(name, "-h")
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: {name}: no value given; help: invoke --help {name}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["story", "--temperature", "abc"], "--temperature: expected a number, got 'abc'"),
        (["story", "--steps", "12x"], "--steps: expected a whole number, got '12x'"),
        (["qemu", "--timeout", "soon"], "--timeout: expected a whole number, got 'soon'"),
        (["bench", "--runs", "many"], "--runs: expected a whole number, got 'many'"),
    ],
)
def test_bad_values_are_one_line_errors(args, message):
    p = invoke(*args)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {message}"]


def test_qemu_prompt_too_long_fails_before_any_build():
    p = invoke("qemu", "--prompt", "x" * 600)
    assert p.returncode == 1
    assert p.stderr.strip() == (
        "error: prompt for the kernel command line: at most 512 bytes, got 600"
    )


@pytest.mark.parametrize(
    "prompt", ['She said "hi"', "it's $HOME `x` \\n \\\\ ; | & é ✓", "two\nlines", " spaced "]
)
def test_any_prompt_reaches_the_guest_intact(prompt, tmp_path):
    """The kernel command line the task boots with, decoded by the guest's own param()
    and base64 code from overlay/etc/init.d/S99storyteller (run by this host's sh)."""
    line = qi.kernel_command_line(prompt, steps=10)
    assert '"' not in line and "\n" not in line
    script = (ROOT / "overlay/etc/init.d/S99storyteller").read_text()
    param = script[script.index("param() {") : script.index("\n}\n", script.index("param() {"))]
    decode = (
        f"{param}\n}}\n"
        'if p64=$(param storyteller.prompt64); then prompt=$(printf "%s" "$p64" | base64 -d)\n'
        "else prompt=$(param storyteller.prompt); fi\n"
        'printf "%s" "$prompt"\n'
    )
    fake = tmp_path / "cmdline"
    fake.write_text(line + "\n")
    got = subprocess.run(
        ["sh", "-c", decode.replace("/proc/cmdline", str(fake))],
        capture_output=True,
        check=True,
    ).stdout
    assert "storyteller.prompt64=" in script  # the guest script reads this parameter
    # $(...) drops trailing newlines, as in the guest; the text is otherwise byte-exact
    assert got.decode() == prompt.rstrip("\n")
    assert base64.b64decode(line.split("prompt64=")[1].split()[0]).decode() == prompt


def test_riscv_bench_runs_at_most_one_job_per_core():
    assert 1 <= count.cores() <= (__import__("os").cpu_count() or 1)


CTRL_C_SCRIPT = """
import os, signal, subprocess, threading
from pathlib import Path
from duo_builder.bench.riscv import count

# stand-ins for the QEMU counting runs (seconds, not minutes) and their weighing: what is
# under test is measure()'s scheduling and its Ctrl-C
for name, value in {
    "ensure_commands": lambda *a, **k: None,
    "build_plugin": lambda: None,
    "_snapshot": lambda t: (Path("/bin/true"), Path("/bin/true")),
    "_weigh": lambda configs, *rest: [c.label for c in configs],
}.items():
    setattr(count, name, value)
count.BinaryModel.of = classmethod(lambda cls, b, k=None: None)
count.engine.build = lambda t: Path("/bin/true")

class Counts:
    total = 1e6

calls, lock = [0], threading.Lock()

def fake_run(binary, target, model, tok, kpath, n, out):
    # Ctrl-C arrives when the fourth run starts: by then three have finished or are
    # finishing, whatever the machine's load (no timer races the runs)
    with lock:
        calls[0] += 1
        fourth = calls[0] == 4
    if fourth:
        os.kill(os.getpid(), signal.SIGINT)
    subprocess.run(["sleep", "3" if fourth else "0.2"], check=False)
    return Counts(), "story"

count.count_run = fake_run
# a shell that started us in the background may have left SIGINT ignored: Ctrl-C's default
signal.signal(signal.SIGINT, signal.default_int_handler)
configs = [count.Configuration(f"c{i}", Path("m"), "ref") for i in range(3)]
try:
    count.measure(configs, Path("tok"), jobs=8)
except count.Interrupted as e:
    print("INTERRUPTED", e, e.partial)
"""


def test_riscv_bench_ctrl_c_keeps_what_finished():
    p = subprocess.run(
        [sys.executable, "-c", CTRL_C_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert f"6 runs, {count.cores()} at a time ({count.cores()} cores)" in p.stdout  # jobs=8
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("INTERRUPTED interrupted (Ctrl-C) after "), p.stdout + p.stderr
    assert "configurations complete" in last

"""The board side over SSH, end to end against the QEMU guest as a board: `invoke qemu
--ssh PORT` boots the offline image with dropbear on 127.0.0.1:PORT, `invoke deploy` puts
the payload (and a faithful model beside it) there, `invoke bench --board` runs the
contest's protocol on it, `invoke deploy --rollback` undoes the deploy. All through the
command line, as a user types it; the guest's SSH server is real (Debian's dropbear)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duo_builder.board import bench, ssh
from duo_builder.board.ssh import BoardError, parse_target
from duo_builder.model.convert import convert
from duo_builder.paths import REPO

BOOT_TIMEOUT = 1800  # includes building the image (the kernel, when not cached: minutes)


def invoke(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ quick, no guest


def test_target_parsing():
    assert parse_target("192.168.42.1") == ssh.Target("root", "192.168.42.1", 22)
    assert str(parse_target("me@duo", 2222)) == "me@duo:2222"
    with pytest.raises(BoardError, match="expected \\[USER@\\]HOST"):
        parse_target("root@host; rm -rf /")
    with pytest.raises(BoardError, match="not a TCP port"):
        parse_target("duo", 70000)


def test_contest_mean_drops_highest_and_lowest():
    assert bench.contest_mean([1.0, 5.0, 2.0, 3.0, 100.0]) == pytest.approx(10 / 3)
    assert bench.contest_mean([4.0, 2.0]) == 3.0  # too few to drop anything


def test_nobody_listening_is_one_line():
    port = free_port()
    done = invoke("deploy", "--host", "root@127.0.0.1", "--port", str(port), "--rollback")
    assert done.returncode == 1
    assert re.fullmatch(r"error: root@127\.0\.0\.1:\d+: cannot connect over SSH: .*\n", done.stderr)


# ------------------------------------------------------------------ the guest as a board


@pytest.fixture(scope="module")
def guest_port():
    """`invoke qemu --ssh PORT` running until the module's tests are done."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "qemu", "--ssh", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + BOOT_TIMEOUT
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops the machine" in line or time.monotonic() > deadline:
                break
        assert any("SSH up in" in ln and f"port {port}" in ln for ln in lines), "".join(lines)
        yield port
    finally:
        # SIGTERM stops it as Ctrl-C does (a background CI shell may leave SIGINT ignored)
        proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
        lines.append(rest or "")
    assert "qemu: stopping" in "".join(lines)


@pytest.fixture(scope="module")
def faithful_model(stories260k, tmp_path_factory) -> Path:
    model, _ = stories260k
    return convert(model, tmp_path_factory.mktemp("faithful") / "stories260K-faithful.bin",
                   "faithful")  # fmt: skip


@pytest.mark.slow
def test_deploy_bench_rollback(guest_port, faithful_model):
    port = str(guest_port)
    target = ["root@127.0.0.1", "--port", port]
    # 1. deploy: every file checked by sha256sum on the guest
    done = invoke("deploy", "--host", *target, "--recipe", "qemu-virt-64m",
                  "--extra-model", str(faithful_model))  # fmt: skip
    assert done.returncode == 0, done.stderr
    m = re.search(r"(\d+) files \(.*\) deployed and verified in ([0-9.]+) s; (\d+) replaced",
                  done.stdout)  # fmt: skip
    assert m, done.stdout
    files, replaced = int(m[1]), int(m[3])
    assert replaced == files - 1  # the image holds the payload already; the extra model is new

    # 2. the contest on the "board": both models, every story = fp32 run.c's (-k ref here)
    done = invoke("bench", "--board", target[0], "--port", port, "--runs", "3",
                  "--recipe", "qemu-virt-64m")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "3 runs per model (highest and lowest dropped)" in out
    assert "reference story: fp32 run.c (-k ref) on this host: stories260K.bin" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.endswith((" yes", ")"))}
    assert rows["model.bin"][-1] == "yes" and rows[faithful_model.name][-1] == "yes", out
    report = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert [Path(x["file"]).name for x in report["models"]] == ["model.bin", faithful_model.name]
    for model in report["models"]:
        assert len(model["tok_s"]) == 3 and model["all_stories_equal_reference"]
        assert model["peak_rss_kb"] and model["mem_available_min_kb"]
    assert report["reference_story"].startswith("Once upon a time")
    assert report["mem_total_kb"] < 64 * 1024

    # 3. rollback: the replaced files back, the extra model gone, the backup removed
    done = invoke("deploy", "--host", *target, "--rollback")
    assert done.returncode == 0, done.stderr
    assert re.search(rf": rolled back in [0-9.]+ s: {replaced} restored, 1 removed", done.stdout)
    done = invoke("deploy", "--host", *target, "--rollback")
    assert done.returncode == 1 and "no deploy to roll back" in done.stderr


@pytest.mark.slow
def test_changed_host_key_refused(guest_port):
    saved = ssh.KNOWN_HOSTS.read_text()
    try:
        other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJR0MPW8aJt9d78IE/ZmkBTQ/O7qOwt2+OMcgk+iDj78"
        ssh.trust_host_key("127.0.0.1", guest_port, other)
        done = invoke("deploy", "--host", "root@127.0.0.1", "--port", str(guest_port),
                      "--rollback")  # fmt: skip
        assert done.returncode == 1
        assert "its host key is not the one recorded" in done.stderr
    finally:
        ssh.KNOWN_HOSTS.write_text(saved)

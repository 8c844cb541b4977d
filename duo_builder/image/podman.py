"""A private Podman service behind a Docker-compatible socket, for tests and for machines
without a Docker engine.

Debian bookworm's podman 4.3 runs containers as root on these machines with runc (crun
fails on hybrid cgroups), the cgroupfs manager, explicit ulimits and netavark; `podman_service()`
writes that containers.conf under build/podman/, starts `podman system service` on a
socket beside it, waits until the docker SDK pings it and stops it on exit:

    with podman_service() as service:
        os.environ["DOCKER_HOST"] = service.url   # what the docker SDK and container.py read

Images live in Podman's usual storage (/var/lib/containers), so a builder image made once
is reused by the next service, and by `podman` itself.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from duo_builder.build.hostdeps import ensure_packages
from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer
from duo_builder.paths import BUILD

WHERE = BUILD / "podman"
CONTAINERS_CONF = """\
# Written by duo_builder.image.podman: what Debian's podman 4.3 needs on these machines.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"

[network]
network_backend = "netavark"
"""
# What a fresh bookworm needs (apt-get --no-install-recommends would pick CNI, not netavark)
PACKAGES = ("podman", "runc", "netavark", "iptables")


class PodmanError(BuildError):
    """The Podman service did not start; the message says why and where its log is."""


@dataclass(frozen=True)
class PodmanService:
    socket: Path
    conf: Path
    log: Path
    pid: int

    @property
    def url(self) -> str:
        """For DOCKER_HOST or docker.DockerClient(base_url=...)."""
        return f"unix://{self.socket}"


def ensure_podman() -> None:
    """podman, runc and netavark from Debian (installed with apt-get when missing and root)."""
    ensure_packages(PACKAGES, "a private Podman service")


@contextlib.contextmanager
def podman_service(where: Path = WHERE, *, timeout: float = 60.0) -> Iterator[PodmanService]:
    """Start `podman system service` on where/podman.sock; stop it when the block ends."""
    ensure_podman()
    where = Path(where).resolve()
    conf, socket, log = where / "containers.conf", where / "podman.sock", where / "service.log"
    if len(str(socket)) > 100:  # sun_path holds 108 bytes
        raise PodmanError(f"socket path {socket} is too long for a unix socket; use a shorter dir")
    if _answers(f"unix://{socket}"):
        raise PodmanError(f"a service already answers at {socket}: use it, or another directory")
    with atomic_writer(conf) as f:
        f.write(CONTAINERS_CONF.encode())
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()  # left by a service that was killed
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    podman = shutil.which("podman") or "podman"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{socket}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    service = PodmanService(socket, conf, log, proc.pid)
    try:
        _wait_until_it_answers(service, proc, timeout)
        yield service
    finally:
        _stop(proc)
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()


def serve(where: Path = WHERE) -> None:
    """`invoke podman`: run the service until Ctrl-C or SIGTERM, printing its DOCKER_HOST."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # explicit handlers: a shell starting us in the background leaves SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        with podman_service(where) as service:
            print(f"export DOCKER_HOST={service.url}  # in another shell; Ctrl-C stops it")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("podman service stopped")


def _wait_until_it_answers(service: PodmanService, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise PodmanError(
                f"podman system service exited with {proc.returncode} at start: "
                f"{_last_line(service.log)} (log: {service.log})"
            )
        if service.socket.exists() and _answers(service.url):
            return
        if time.monotonic() > deadline:
            raise PodmanError(
                f"podman system service did not answer on {service.socket} within "
                f"{timeout:.0f} s (log: {service.log})"
            )
        time.sleep(0.2)


def _answers(url: str) -> bool:
    import docker

    try:
        docker.DockerClient(base_url=url, timeout=5).ping()
    except Exception:  # the SDK raises many kinds; any means "no"
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1].strip()[:200] if lines else "no output"

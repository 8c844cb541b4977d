"""Debian packages the host needs for a task, installed on demand.

Tasks name the commands or packages they need; what is missing is installed with apt-get
when we run as root (CI and these machines), else the error names the command to run."""

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable

from duo_builder.errors import BuildError


class HostDependencyError(BuildError):
    """A required host tool or library is missing and could not be installed."""


def ensure_commands(needs: dict[str, str], why: str) -> None:
    """`needs` maps a command (or absolute path) to the Debian package providing it."""

    def missing() -> list[str]:
        return [cmd for cmd in needs if shutil.which(cmd) is None]

    if missing():
        packages = sorted({needs[cmd] for cmd in missing()})
        _apt_install(packages, f"{why} needs {', '.join(missing())}", missing)


def ensure_packages(packages: Iterable[str], why: str) -> None:
    """Installs the Debian packages (libraries, data) that are not installed yet."""
    packages = list(packages)

    def missing() -> list[str]:
        return _not_installed(packages)

    if missing():
        _apt_install(missing(), f"{why} needs {', '.join(missing())}", missing)


def _not_installed(packages: list[str]) -> list[str]:
    query = ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages]
    listed = subprocess.run(query, capture_output=True, text=True).stdout.splitlines()
    ok = {line.split()[0] for line in listed if line.endswith(" installed")}
    return [p for p in packages if p not in ok]


def _apt_install(packages: list[str], need: str, missing: Callable[[], list[str]]) -> None:
    hint = f"apt-get install {' '.join(packages)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HostDependencyError(f"{need}: run `{hint}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # a stale package list is the usual cause: refresh once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0 or missing():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise HostDependencyError(f"{need}; `{hint}` failed: " + " / ".join(tail))

"""Debian packages the host needs for a task, installed on demand.

Tasks name the commands they need; a missing one is installed with apt-get when we run
as root (CI and these machines), else the error names the exact command to run."""

import os
import shutil
import subprocess


class HostDependencyError(Exception):
    """A required host tool is missing and could not be installed."""


def ensure_commands(needs: dict[str, str], why: str) -> None:
    """`needs` maps a command (or absolute path) to the Debian package providing it."""
    missing = {cmd: pkg for cmd, pkg in needs.items() if shutil.which(cmd) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    hint = f"apt-get install {' '.join(packages)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HostDependencyError(f"{why} needs {', '.join(missing)}: run `{hint}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # a stale package list is the usual cause: refresh once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    still = [cmd for cmd in missing if shutil.which(cmd) is None]
    if result.returncode != 0 or still:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise HostDependencyError(
            f"{why} needs {', '.join(missing)}; `{hint}` failed: " + " / ".join(tail)
        )

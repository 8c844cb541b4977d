"""One base class for every error a user can fix, and one way to run a tool.

Every module's error derives from BuildError, so `tasks.py` (and the container's entry
point) catch it once and show it as one line; anything else is a bug and keeps its
traceback. `run()` is the one subprocess helper: a failing command becomes a BuildError
that names what was being done and ends with the command's last lines of output.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

TAIL_LINES = 15


class BuildError(Exception):
    """A failure the user can act on: its message is one line naming the file or the fix."""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last non-empty `lines` lines of a tool's output, for an error message."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    error: type[BuildError] = BuildError,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | str | None = None,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; on failure raise `error` saying `what` failed, with the output's last lines.

    With capture=False the output goes to the terminal as it comes (long builds), and the
    error names the exit status only. A missing program or a timeout is a BuildError too.
    """
    argv = [str(a) for a in cmd]
    text_input = input.decode() if isinstance(input, bytes) else input
    try:
        p = subprocess.run(
            argv,
            cwd=cwd,
            env=None if env is None else dict(env),
            input=text_input,
            capture_output=capture,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise error(f"{what}: {argv[0]} is not installed (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: `{Path(argv[0]).name}` did not finish in {timeout:g} s") from None
    if p.returncode != 0:
        detail = tail((p.stdout or "") + (p.stderr or "")) if capture else ""
        shown = " ".join(argv[:4]) + (" ..." if len(argv) > 4 else "")
        msg = f"{what} failed (`{shown}` exit {p.returncode})"
        raise error(msg + (f":\n{detail}" if detail else ""))
    return p

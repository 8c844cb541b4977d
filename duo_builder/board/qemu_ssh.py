"""`invoke qemu --ssh PORT`: the offline image as a board to deploy to and bench on.

The guest's SSH server (Debian's dropbear, bases/debian.py S50DROPBEAR) is reachable at
127.0.0.1:PORT only; root logs in with the builder's key (build/ssh/id_ed25519, carried in
on a small disk at boot, never baked into the image) and with no password. The host key
the guest made at first boot is read from its console into build/ssh/known_hosts.
"""

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from duo_builder.board.ssh import BoardError, ensure_key, trust_host_key
from duo_builder.image.bases import debian


def _check_port_free(port: int) -> None:
    if not 0 < port < 65536:
        raise BoardError(f"--ssh {port}: not a TCP port (1..65535)")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as qemu's hostfwd does
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise BoardError(f"--ssh {port}: 127.0.0.1:{port} is taken ({e.strerror})") from None


@contextlib.contextmanager
def guest(image: Path, kernel: Path, port: int, out_dir: Path) -> Iterator[debian.SshGuest]:
    """A running guest with SSH on 127.0.0.1:port, its host key trusted; stopped on exit."""
    _check_port_free(port)
    _, public = ensure_key()
    console = out_dir / "console.log"
    with debian.ssh_guest(
        image, kernel, port=port, authorized_keys=(public + "\n").encode(), console_log=console
    ) as g:
        trust_host_key("127.0.0.1", port, g.host_key)
        yield g


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(image: Path, kernel: Path, port: int, out_dir: Path) -> None:
    """Boot and stay up until Ctrl-C (or SIGTERM), printing how to reach the guest."""
    start = time.monotonic()
    with guest(image, kernel, port, out_dir) as g:
        print(
            f"qemu: SSH up in {time.monotonic() - start:.0f} s at root@127.0.0.1 port {port} "
            f"(console: {g.console_log}); host key {g.host_key.split()[0]} recorded\n"
            f"  python3 -m invoke deploy --host root@127.0.0.1 --port {port} "
            "--recipe qemu-virt-64m\n"
            f"  python3 -m invoke bench --board root@127.0.0.1 --port {port} --runs 3 "
            "--recipe qemu-virt-64m\n"
            "Ctrl-C stops the machine.",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it like Ctrl-C
        try:
            while g.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("qemu: stopping", flush=True)
            return
    raise BoardError(f"qemu exited with {g.process.returncode}; see {g.console_log}")

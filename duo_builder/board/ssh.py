"""SSH to a board with Paramiko: who to log in as, with which key, which host keys to
trust, and running commands whose input and output are bytes.

Paramiko is Fabric's transport; Fabric itself cannot be installed beside this project's
Invoke (fabric 3.2.3, the newest, requires invoke<3.0; requirements.txt pins invoke 3.0.3),
and what it would add here (a Connection around Paramiko's client) is the class below.

Keys: the builder's own key pair, build/ssh/id_ed25519 (made once, here, by the
`cryptography` library Paramiko stands on), is offered first, then the user's agent and
~/.ssh keys, then a password if one is given (the stock Milk-V image: root / milkv).
Host keys: build/ssh/known_hosts. A host seen for the first time is trusted and recorded
(saying so); a host whose key changed is refused in one line. `invoke qemu --ssh` writes
the guest's key there itself, read from the guest's console, so the test guest is
verified, not trusted on first use.

Boards run busybox and dropbear, which has no SFTP server: files travel as the stdin of
`cat > FILE` on an exec channel, bytes as they are.
"""

import contextlib
import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer
from duo_builder.paths import BUILD

SSH_DIR = BUILD / "ssh"
KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
CHUNK = 1 << 16


class BoardError(BuildError):
    """The board cannot be reached or did not do what was asked; the message says why."""


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int

    def __str__(self) -> str:
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.user}@{self.host}{port}"


def parse_target(spec: str, port: int = 22, default_user: str = "root") -> Target:
    """[USER@]HOST (an IPv6 address in brackets) and a port."""
    m = re.fullmatch(r"(?:([A-Za-z0-9._-]+)@)?(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+)", spec)
    if not m:
        raise BoardError(f"--host/--board {spec!r}: expected [USER@]HOST, e.g. root@192.168.42.1")
    if not 0 < port < 65536:
        raise BoardError(f"--port {port}: not a TCP port (1..65535)")
    return Target(m[1] or default_user, m[2].strip("[]"), port)


def ensure_key() -> tuple[Path, str]:
    """The builder's key pair (made on first use): the private key's path and the public
    key's authorized_keys line."""
    pub = KEY.with_suffix(".pub")
    if not (KEY.exists() and pub.exists()):
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.generate()
        SSH_DIR.mkdir(parents=True, exist_ok=True)
        os.chmod(SSH_DIR, 0o700)
        secret = private.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()
        )
        public = private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
        with atomic_writer(KEY) as f:
            f.write(secret)
        os.chmod(KEY, 0o600)
        with atomic_writer(pub) as f:
            f.write(public + b" duo-storyteller-builder\n")
    return KEY, pub.read_text().strip()


def _host_id(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def trust_host_key(host: str, port: int, key_line: str) -> None:
    """Record `key_line` ("TYPE BASE64") as host:port's key, replacing any earlier one."""
    ident = _host_id(host, port)
    lines = KNOWN_HOSTS.read_text().splitlines() if KNOWN_HOSTS.exists() else []
    kept = [ln for ln in lines if ln.split(" ", 1)[0] != ident]
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    with atomic_writer(KNOWN_HOSTS) as f:
        f.write(("\n".join([*kept, f"{ident} {key_line}"]) + "\n").encode())


class _RecordNew:
    """Paramiko policy: a host not yet in known_hosts is recorded (trust on first use)."""

    def missing_host_key(self, client, hostname, key) -> None:  # noqa: ANN001
        line = f"{key.get_name()} {key.get_base64()}"
        host, port = hostname, 22
        if m := re.fullmatch(r"\[(.+)\]:(\d+)", hostname):
            host, port = m[1], int(m[2])
        trust_host_key(host, port, line)
        print(f"{hostname}: new host key {key.get_name()} recorded in {KNOWN_HOSTS}", flush=True)


class Board:
    """One SSH connection to a board (a context manager)."""

    def __init__(self, target: Target, *, password: str = "", timeout: float = 20) -> None:
        self.target = target
        self.password = password
        self.timeout = timeout
        self._client = None

    def __enter__(self) -> "Board":
        import paramiko

        key, _ = ensure_key()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_RecordNew())
        if KNOWN_HOSTS.exists():
            client.load_host_keys(str(KNOWN_HOSTS))
        try:
            client.connect(
                self.target.host,
                port=self.target.port,
                username=self.target.user,
                password=self.password or None,
                key_filename=[str(key)],
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
            )
        except paramiko.BadHostKeyException as e:
            raise BoardError(
                f"{self.target}: its host key is not the one recorded in {KNOWN_HOSTS} "
                f"({e.key.get_name()}): if the board was reflashed, delete its line there"
            ) from None
        except paramiko.AuthenticationException:
            hint = "" if self.password else " (the stock Milk-V image: --password milkv)"
            raise BoardError(
                f"{self.target}: SSH login refused with {KEY}, the agent's and ~/.ssh keys"
                f"{' and the password' if self.password else ''}{hint}"
            ) from None
        except (OSError, paramiko.SSHException) as e:
            client.close()
            raise BoardError(f"{self.target}: cannot connect over SSH: {e}") from None
        self._client = client
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _transport(self):  # noqa: ANN202
        assert self._client is not None, "use Board as a context manager"
        return self._client.get_transport()

    def exec(
        self,
        command: str,
        *,
        stdin: BinaryIO | bytes | None = None,
        progress: Callable[[int], None] | None = None,
        check: bool = True,
        what: str = "",
    ) -> tuple[int, bytes, bytes]:
        """Run `command` (sh -c on the board); stdin streamed from bytes or a file.
        Returns (status, stdout, stderr); with check, a non-zero status is a BoardError."""
        import paramiko

        try:
            status, out, err = self._exec(command, stdin, progress)
        except (EOFError, OSError, paramiko.SSHException) as e:
            raise BoardError(
                f"{self.target}: the SSH connection failed during {what or command[:60]!r}: "
                f"{e or type(e).__name__}"
            ) from None
        if check and status != 0:
            tail = bytes(err or out).decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise BoardError(
                f"{self.target}: {what or command[:60]} failed (exit {status}): {tail[0]}"
            )
        return status, out, err

    def _exec(
        self,
        command: str,
        stdin: BinaryIO | bytes | None,
        progress: Callable[[int], None] | None,
    ) -> tuple[int, bytes, bytes]:
        chan = self._transport().open_session()
        try:
            chan.exec_command(command)
            if stdin is not None:
                src = stdin if not isinstance(stdin, bytes | bytearray) else _BytesReader(stdin)
                while chunk := src.read(CHUNK):
                    chan.sendall(chunk)
                    if progress:
                        progress(len(chunk))
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                got = False
                if chan.recv_ready():
                    out += chan.recv(CHUNK)
                    got = True
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(CHUNK)
                    got = True
                if not got:
                    if chan.exit_status_ready() and not chan.recv_ready():
                        if not chan.recv_stderr_ready():
                            break
                    else:
                        chan.status_event.wait(0.05)
            status = chan.recv_exit_status()
        finally:
            chan.close()
        return status, bytes(out), bytes(err)

    def sh(self, script: str, *, what: str = "", check: bool = True) -> str:
        """stdout of a shell script, as text. The script travels on stdin (an SSH command
        line is short: dropbear drops the connection on a long one) and is read whole
        before it runs, so its programs see an empty stdin, not the rest of the script."""
        return self.exec(
            'sh -c "$(cat)"', stdin=script.encode(), what=what or script[:60], check=check
        )[1].decode(errors="replace")

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        q = shlex.quote(path)
        self.exec(f"cat > {q} && chmod {mode:o} {q}", stdin=data, what=f"writing {path}")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = memoryview(data), 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += len(chunk)
        return bytes(chunk)


@contextlib.contextmanager
def connect(spec: str, port: int = 22, password: str = "") -> Iterator[Board]:
    with Board(parse_target(spec, port), password=password) as board:
        yield board

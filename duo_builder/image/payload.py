"""What every image holds on top of its base: the one list, which every base installs.

    /usr/bin/llama2                      0755  the engine, built for the recipe's target
    /usr/bin/storyteller                 0755  the robot (listen, tell, speak), same target
    /usr/share/storyteller/espeak-ng-data/...  0644  eSpeak NG's data: the recipes' voices
    /usr/share/storyteller/en-us/...     0644  PocketSphinx's en-us acoustic model (7 files)
    /usr/share/storyteller/alsa/...      0644  alsa-lib's configuration (alsa.conf, pcm/...)
    /usr/share/storyteller/model.bin     0644  the recipe's model, in its format
    /usr/share/storyteller/tokenizer.bin 0644  its tokenizer
    /usr/share/storyteller/story.dict    0644  the recognizer's dictionary (voice input)
    /etc/storyteller.conf                0644  overlay/etc/storyteller.conf + the recipe's voice
    /etc/default/storyteller             0644  the recipe's autostart, read by S99storyteller
    /etc/init.d/S99storyteller           0755  starts it at boot (overlay/etc/init.d/)
    /etc/asound.conf                     0644  overlay/etc/asound.conf.<the recipe's audio>

Both programs are static (duo_builder.build.engine, payload_libs): they carry their own
glibc, alsa-lib, espeak-ng and pocketsphinx and read their data only from the paths above,
so the very files the QEMU boot test exercises (rv64gcv) are, but for the engine's ISA
(c906 on the Duo), what every image holds, whatever its base's libc and libraries.

The paths and modes are the same for every recipe; the contents follow the recipe. A file
can be declared without a source when this machine cannot make it for the target (see
`File.missing`): bases then leave it out and the manifest says why. The debian base writes
the payload into its ext4, the sdk base stages it for Buildroot's post-build script
(buildroot-external/board/milkv-duo/post-build.sh), the release-image base writes it into
the official image's rootfs.
"""

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from duo_builder.build import engine, payload_libs
from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer, sha256_file
from duo_builder.image.recipe import Recipe
from duo_builder.model.convert import convert
from duo_builder.model.download import fetch_model
from duo_builder.paths import REPO

OVERLAY = REPO / "overlay"
INIT_SCRIPT = OVERLAY / "etc" / "init.d" / "S99storyteller"
STORYTELLER_CONF = OVERLAY / "etc" / "storyteller.conf"
STORY_DICT = REPO / "engine" / "storyteller" / "story.dict"


class PayloadError(BuildError):
    """A payload file is missing or does not match the recipe; the message says which."""


@dataclass(frozen=True)
class File:
    path: str  # absolute, in the image
    mode: int
    source: Path | bytes | None  # a file on this machine, the contents, or None: see missing
    missing: str = ""  # why there is no source for this target (the file is left out)


@dataclass(frozen=True)
class Payload:
    files: tuple[File, ...]

    def listing(self) -> list[tuple[str, int]]:
        """(path, mode) of every declared file, sorted: the same for every recipe."""
        return sorted((f.path, f.mode) for f in self.files)

    def present(self) -> list[File]:
        """The files to install, sorted by path."""
        return sorted((f for f in self.files if f.source is not None), key=lambda f: f.path)

    def absent(self) -> dict[str, str]:
        """Declared files this build leaves out: path -> why."""
        return {f.path: f.missing for f in self.files if f.source is None}

    def with_source(self, path: str, source: Path | bytes) -> "Payload":
        """The same payload with `path`'s contents taken from `source`."""
        kept = (replace(f, source=source, missing="") if f.path == path else f for f in self.files)
        return Payload(tuple(kept))

    def without(self, path: str, why: str) -> "Payload":
        """The same payload with `path` declared but left out, saying why."""
        return Payload(
            tuple(replace(f, source=None, missing=why) if f.path == path else f for f in self.files)
        )

    def manifest(self) -> list[dict[str, Any]]:
        """path, sha256, size, mode of each installed file (the manifest's `files`)."""
        out = []
        for f in self.present():
            data = read(f)
            digest = hashlib.sha256(data).hexdigest()
            out.append({"path": f.path, "sha256": digest, "size": len(data), "mode": f.mode})
        return out

    def stage(self, directory: Path) -> None:
        """Write the installed files under `directory`, laid out like the image, with their
        modes (for the SDK's Buildroot post-build script, which copies it as it is)."""
        for f in self.present():
            dst = directory / f.path.lstrip("/")
            with atomic_writer(dst) as out:
                out.write(read(f))
            os.chmod(dst, f.mode)


def read(f: File) -> bytes:
    if isinstance(f.source, bytes):
        return f.source
    if f.source is None or not f.source.is_file():
        raise PayloadError(f"image payload {f.path}: {f.source or f.missing} does not exist")
    return f.source.read_bytes()


@dataclass(frozen=True)
class Settings:
    """What a recipe says about the payload's contents."""

    config_text: str  # /etc/storyteller.conf
    autostart: bytes  # /etc/default/storyteller
    audio: str  # the ALSA route: overlay/etc/asound.conf.<audio>


@dataclass(frozen=True)
class Products:
    """What a build or a download provides: the engine's programs, the model, its
    tokenizer, and the storyteller's data (payload_libs' data/ tree, laid out like the
    image; None: the built one, payload_libs.ensure())."""

    llama2: Path
    storyteller: Path | None
    model: Path
    tokenizer: Path
    storyteller_missing: str = ""  # why storyteller is None
    data: Path | None = None


def declare(settings: Settings, products: Products) -> Payload:
    """The payload: the one list of what an image holds (see the module's docstring)."""
    p = products
    data_root = p.data if p.data is not None else payload_libs.ensure().data
    data = tuple(
        File("/" + str(f.relative_to(data_root)), 0o644, f)
        for f in sorted(data_root.rglob("*"))
        if f.is_file()
    )
    return Payload(
        (
            *data,
            File("/usr/bin/llama2", 0o755, p.llama2),
            File("/usr/bin/storyteller", 0o755, p.storyteller, p.storyteller_missing),
            File("/usr/share/storyteller/model.bin", 0o644, p.model),
            File("/usr/share/storyteller/tokenizer.bin", 0o644, p.tokenizer),
            File("/usr/share/storyteller/story.dict", 0o644, STORY_DICT),
            File("/etc/storyteller.conf", 0o644, settings.config_text.encode()),
            File("/etc/default/storyteller", 0o644, settings.autostart),
            File("/etc/init.d/S99storyteller", 0o755, INIT_SCRIPT),
            File("/etc/asound.conf", 0o644, asound_conf(settings.audio)),
        )
    )


def gather(r: Recipe, work: Path) -> Payload:
    """The recipe's payload: builds the engine for its target, verifies (and converts) the
    model; conversions go to `work`."""
    llama2 = engine.build(r.engine_target, cflags=r.engine_cflags)
    storyteller, missing = llama2.with_name("storyteller"), ""
    if "storyteller" not in engine.target(r.engine_target).programs:
        storyteller, missing = None, f"the {r.engine_target} target builds no storyteller"
    elif not storyteller.exists():
        storyteller, missing = None, f"the {r.engine_target} build made no storyteller"
    data = payload_libs.ensure().data
    model, tokenizer = model_for_image(r, work)
    products = Products(llama2, storyteller, model, tokenizer, missing, data)
    return declare(settings(r), products)


def settings(r: Recipe) -> Settings:
    return Settings(storyteller_conf(r), autostart_defaults(r), r.audio)


def storyteller_conf(r: Recipe) -> str:
    """overlay/etc/storyteller.conf with the recipe's voice, speed and pitch, and the
    payload's own eSpeak NG data and acoustic model."""
    template = STORYTELLER_CONF.read_text()
    values = {
        "voice": r.voice,
        "speed": str(r.speed),
        "pitch": str(r.pitch),
        "espeak_data": payload_libs.ESPEAK_DATA,
        "asr_model": payload_libs.ASR_MODEL,
        # the Duo's blue LED; the QEMU machine has none (no warning in its log)
        "led": "gpio440" if r.board == "milkv-duo" else "none",
    }
    lines = []
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key} = {values[key]}" if "=" in line and key in values else line)
    return "\n".join(lines) + "\n"


def autostart_defaults(r: Recipe) -> bytes:
    """/etc/default/storyteller: the recipe's boot behaviour, read by S99storyteller."""
    prompt = r.prompt.replace("'", "")  # a shell fragment: single-quoted, so no quotes inside
    return f"STORYTELLER_MODE={r.autostart}\nSTORYTELLER_PROMPT='{prompt}'\n".encode()


def asound_conf(audio: str) -> Path:
    """overlay/etc/asound.conf.<audio> for a recipe's audio route (usb, none)."""
    path = OVERLAY / "etc" / f"asound.conf.{audio}"
    if not path.exists():
        known = sorted(
            p.name.removeprefix("asound.conf.") for p in path.parent.glob("asound.conf.*")
        )
        raise PayloadError(f"no ALSA configuration for audio {audio!r}; known: {', '.join(known)}")
    return path


def model_for_image(r: Recipe, work: Path) -> tuple[Path, Path]:
    """(model in the recipe's format, tokenizer), both verified."""
    m = r.model
    model = _verified_input(m.path, m.sha256, m.url, "model")
    tokenizer = _verified_input(m.tokenizer, m.tokenizer_sha256, "", "tokenizer")
    if m.format != "v0":  # recipes name fp32 sources; the image may carry another format
        work.mkdir(parents=True, exist_ok=True)
        model = convert(model, work / f"model-{m.format}.bin", m.format)
    return model, tokenizer


def _verified_input(path: str, sha256: str, url: str, what: str) -> Path:
    """A bundled file (checked) or a download into the verified cache."""
    if url:
        return fetch_model(sha256=sha256, url=url, name=Path(path).name)
    local = REPO / path
    if not local.exists():
        raise PayloadError(f"{what} {path} does not exist in the repository")
    got = sha256_file(local)
    if got != sha256:
        raise PayloadError(f"{what} {path} has sha256 {got}, the recipe pins {sha256}")
    return local

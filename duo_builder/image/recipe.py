"""Recipes: what an image holds, declared in recipes/NAME.yaml and validated here.

Every error names the file, the key and what is allowed, e.g.
`recipes/duo-64m.yaml: audio: 'hdmi' is not one of usb, none`.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from duo_builder.errors import BuildError
from duo_builder.paths import REPO

RECIPES = REPO / "recipes"
BOARDS = ("milkv-duo", "qemu-virt")
BASES = ("sdk", "release-image", "debian")
AUDIO_ROUTES = ("usb", "none")
# Routes that were offered once, and why they are not any more
REMOVED_AUDIO_ROUTES = {
    "i2s-max98357a": "the vendor SDK's Duo kernel has no MAX98357A driver and no device tree "
    "creates an I2S card on the CV1800B's pins; use audio: usb (a USB sound card)",
}
ENGINE_TARGETS = ("rv64gc", "rv64gcv", "c906")
# q8, q4, fp32: the engine's packed formats (engine/FORMAT.md); v0, v1, q80: llama2.c's
MODEL_FORMATS = ("q8", "q4", "fp32", "v0", "v1", "q80")
AUTOSTART = ("story", "listen", "off")
# debian: the guest's packages must be the ones the storyteller was linked against, and
# the toolchain chroot is sid (gcc 15, the only gcc that compiles XTheadVector soundly):
# another suite needs a toolchain chroot of that suite first
DEBIAN_SUITES = ("sid",)
SHA256 = re.compile(r"[0-9a-f]{64}")
COMMIT = re.compile(r"[0-9a-f]{40}")


class RecipeError(BuildError):
    """A recipe is missing, unreadable or invalid; the message names file and key."""


@dataclass(frozen=True)
class Base:
    kind: str
    repo: str = ""  # sdk: the vendor SDK's git URL
    commit: str = ""  # sdk: pinned commit
    board: str = ""  # sdk: the SDK's board name (./build.sh BOARD)
    url: str = ""  # release-image: where the official image is
    sha256: str = ""  # release-image: its sha256
    suite: str = ""  # debian: the suite packages come from


@dataclass(frozen=True)
class ModelSpec:
    path: str  # bundled file (relative to the repo) or the name to give a download
    sha256: str
    tokenizer: str
    tokenizer_sha256: str
    url: str = ""
    format: str = "v0"  # the image carries the model in this format (converted if needed)


@dataclass(frozen=True)
class Recipe:
    name: str
    source: Path
    description: str
    board: str
    base: Base
    ion_mb: int
    audio: str
    model: ModelSpec
    engine_target: str
    engine_cflags: str
    voice: str
    speed: int
    pitch: int
    autostart: str
    prompt: str
    image_size_mb: int
    extra: dict[str, Any] = field(default_factory=dict)


class _Fields:
    """Typed access to one mapping of the YAML, with errors that say where."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: expected a mapping of keys to values")
        self.data, self.where, self.used = data, where, set()

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise RecipeError(f"{self.where}: missing key '{key}'")
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise RecipeError(
                f"{self.where}: {key}: expected {kind.__name__}, got {type(value).__name__} "
                f"{value!r}"
            )
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in allowed:
            raise RecipeError(f"{self.where}: {key}: '{value}' is not one of {', '.join(allowed)}")
        return value

    def pattern(self, key: str, regex: re.Pattern[str], what: str, default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value and not regex.fullmatch(value):
            raise RecipeError(f"{self.where}: {key}: '{value}' is not {what}")
        return value

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.get(key, dict), f"{self.where}: {key}")

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise RecipeError(
                f"{self.where}: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(self.used))})"
            )


def _base(f: _Fields) -> Base:
    kind = f.choice("kind", BASES)
    if kind == "sdk":
        base = Base(
            kind,
            repo=f.get("repo", str),
            board=f.get("board", str),
            commit=f.pattern("commit", COMMIT, "a 40-hex-digit git commit"),
        )
    elif kind == "release-image":
        # sha256 may be null until someone has downloaded and checked the release once;
        # the build then refuses the base and says how to pin it
        unpinned = f.data.get("sha256", "") is None
        sha = "" if unpinned else f.pattern("sha256", SHA256, "a sha256 (64 lowercase hex digits)")
        f.used.add("sha256")
        base = Base(kind, url=f.get("url", str), sha256=sha)
    else:
        base = Base(kind, suite=f.choice("suite", DEBIAN_SUITES))
    f.check_unknown()
    return base


def _model(f: _Fields) -> ModelSpec:
    sha = "a sha256 (64 lowercase hex digits)"
    spec = ModelSpec(
        path=f.get("path", str),
        sha256=f.pattern("sha256", SHA256, sha),
        tokenizer=f.get("tokenizer", str),
        tokenizer_sha256=f.pattern("tokenizer_sha256", SHA256, sha),
        url=f.get("url", str, ""),
        format=f.choice("format", MODEL_FORMATS, "v0"),
    )
    f.check_unknown()
    return spec


def _audio(f: _Fields) -> str:
    route = f.data.get("audio")
    if route in REMOVED_AUDIO_ROUTES:
        raise RecipeError(f"{f.where}: audio: '{route}' was removed: {REMOVED_AUDIO_ROUTES[route]}")
    return f.choice("audio", AUDIO_ROUTES)


def parse(data: Any, source: Path) -> Recipe:
    where = _display(source)
    f = _Fields(data, where)
    name = f.get("name", str)
    if name != source.stem:
        raise RecipeError(f"{where}: name: '{name}' must match the file name '{source.stem}'")
    memory, engine, voice, autostart, image = (
        f.sub("memory"),
        f.sub("engine"),
        f.sub("voice"),
        f.sub("autostart"),
        f.sub("image"),
    )
    recipe = Recipe(
        name=name,
        source=source,
        description=f.get("description", str, ""),
        board=f.choice("board", BOARDS),
        base=_base(f.sub("base")),
        ion_mb=memory.get("ion_mb", int),
        audio=_audio(f),
        model=_model(f.sub("model")),
        engine_target=engine.choice("target", ENGINE_TARGETS),
        engine_cflags=engine.get("cflags", str, ""),
        voice=voice.get("name", str),
        speed=voice.get("speed", int, 150),
        pitch=voice.get("pitch", int, 40),
        autostart=autostart.choice("mode", AUTOSTART),
        prompt=autostart.get("prompt", str, "Once upon a time"),
        image_size_mb=image.get("size_mb", int),
    )
    for sub in (memory, engine, voice, autostart, image):
        sub.check_unknown()
    f.check_unknown()
    _check_ranges(recipe, where)
    return recipe


def _check_ranges(r: Recipe, where: str) -> None:
    checks = [
        (0 <= r.ion_mb <= 64, f"memory: ion_mb: {r.ion_mb} is not in 0..64"),
        (80 <= r.speed <= 450, f"voice: speed: {r.speed} is not in 80..450 words a minute"),
        (0 <= r.pitch <= 99, f"voice: pitch: {r.pitch} is not in 0..99"),
        (32 <= r.image_size_mb <= 4096, f"image: size_mb: {r.image_size_mb} is not in 32..4096"),
        (
            r.board == "qemu-virt" or r.base.kind != "debian",
            "base: kind 'debian' builds only for board qemu-virt",
        ),
        (
            r.board == "milkv-duo" or r.base.kind == "debian",
            f"base: kind '{r.base.kind}' needs board milkv-duo",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"{where}: {message}")


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load(name_or_path: str) -> Recipe:
    """A recipe by name (recipes/NAME.yaml) or by path."""
    path = Path(name_or_path)
    if path.suffix != ".yaml":
        path = RECIPES / f"{name_or_path}.yaml"
    if not path.exists():
        raise RecipeError(
            f"no recipe '{name_or_path}' ({_display(path)} does not exist); "
            f"available: {', '.join(available())}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{_display(path)}: not valid YAML: {e}") from None
    return parse(data, path)

"""Recipes: what an image holds, declared in recipes/NAME.yaml and validated here.

Every error names the file, the key and what is allowed, e.g.
`recipes/duo-64m.yaml: audio: 'hdmi' is not one of usb, none`.
"""

import errno
import os
import re
import stat
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
# faithful: fp32 + an int8 classifier, for -k faithful (fp32 run.c's exact story)
MODEL_FORMATS = ("q8", "q4", "fp32", "faithful", "v0", "v1", "q80")
AUTOSTART = ("story", "listen", "off")
# debian: the guest's packages must be the ones the storyteller was linked against, and
# the toolchain chroot is sid (gcc 15, the only gcc that compiles XTheadVector soundly):
# another suite needs a toolchain chroot of that suite first
DEBIAN_SUITES = ("sid",)
SHA256 = re.compile(r"[0-9a-f]{64}")
COMMIT = re.compile(r"[0-9a-f]{40}")
# eSpeak NG voice names: a language and an optional +variant, e.g. en-us, en+m3
VOICE = re.compile(r"[A-Za-z0-9_.-]{1,40}(\+[A-Za-z0-9_.-]{1,40})?")
# What a recipe file may be: small, regular, UTF-8, plain YAML (no anchors or aliases)
MAX_RECIPE_BYTES = 64 << 10
MAX_DEPTH = 16  # mappings/sequences inside one another (the shipped recipes use 2)
MAX_INT_DIGITS = 18  # every integer a recipe holds is a size or a percentage
_SHOWN = 60  # characters of a value quoted in an error message
# Control characters (C0, DEL, C1) and Unicode line/paragraph separators: a string with one
# could start a new line in /etc/storyteller.conf or /etc/default/storyteller
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class RecipeError(BuildError):
    """A recipe is missing, unreadable or invalid; the message names file and key."""


@dataclass(frozen=True)
class Base:
    kind: str
    repo: str = ""  # sdk: the vendor SDK's git URL
    commit: str = ""  # sdk: pinned commit
    board: str = ""  # sdk: the SDK's board name (./build.sh BOARD)
    url: str = ""  # release-image: where the official image is
    sha256: str = ""  # release-image: its sha256 ("": pin what --base-image gives)
    image: str = ""  # release-image: the file given with --base-image (not from the recipe)
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


def _show(value: Any) -> str:
    """A value for an error message: its repr, cut to a few dozen characters."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


class _Fields:
    """Typed access to one mapping of the YAML, with errors that say where."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: expected a mapping of keys to values")
        for key in data:
            if not isinstance(key, str):
                raise RecipeError(
                    f"{where}: key {_show(key)} ({type(key).__name__}) is not a name; "
                    "write it in quotes if it is meant as one"
                )
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
                f"{self.where}: {key}: expected {kind.__name__}, got {type(value).__name__}"
                + ("" if isinstance(value, (dict, list)) else f" {_show(value)}")
            )
        if isinstance(value, str) and (bad := _CONTROL.search(value)):
            raise RecipeError(
                f"{self.where}: {key}: {_show(value)} holds a control character "
                f"({bad[0]!r}); values are one line of printable text"
            )
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in allowed:
            raise RecipeError(
                f"{self.where}: {key}: {_show(value)} is not one of {', '.join(allowed)}"
            )
        return value

    def pattern(self, key: str, regex: re.Pattern[str], what: str, default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value and not regex.fullmatch(value):
            raise RecipeError(f"{self.where}: {key}: {_show(value)} is not {what}")
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
        # sha256 null (or ""): pin what the user gives with --base-image (its sha256 goes
        # into the manifest); without --base-image the build refuses and says so
        unpinned = f.data.get("sha256", "") in (None, "")
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
    _check_file_key(f.where, "path", spec.path, downloaded=bool(spec.url))
    _check_file_key(f.where, "tokenizer", spec.tokenizer, downloaded=False)
    return spec


def _check_file_key(where: str, key: str, value: str, *, downloaded: bool) -> None:
    """A file the image takes: with a URL only its name counts; else a file in the repo."""
    if not value or "\0" in value:
        raise RecipeError(f"{where}: {key}: must name a file")
    if downloaded:
        return
    local = REPO / value
    try:
        mode = os.stat(local).st_mode
    except (OSError, ValueError):
        return  # missing: the payload stage says so, with the recipe's sha256
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise RecipeError(f"{where}: {key}: {_show(value)} is {kind}; name the file itself")


def _audio(f: _Fields) -> str:
    route = f.data.get("audio")
    if isinstance(route, str) and route in REMOVED_AUDIO_ROUTES:
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
        voice=voice.pattern("name", VOICE, "an eSpeak NG voice name (e.g. en-us, en+m3)"),
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
    try:  # abspath, not resolve(): a symlink loop must not raise here
        return str(Path(os.path.abspath(path)).relative_to(REPO))
    except ValueError:
        return str(path)


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load(name_or_path: str) -> Recipe:
    """A recipe by name (recipes/NAME.yaml) or by path."""
    path = Path(name_or_path)
    if path.suffix != ".yaml" and "/" not in name_or_path:
        if not re.fullmatch(r"[\w.+-]{1,100}", name_or_path):
            raise RecipeError(
                f"no recipe {_show(name_or_path)}; available: {', '.join(available())}"
            )
        path = RECIPES / f"{name_or_path}.yaml"
    if not os.path.lexists(path):
        raise RecipeError(
            f"no recipe '{name_or_path}' ({_display(path)} does not exist); "
            f"available: {', '.join(available())}"
        )
    return parse(parse_text(read_text(path), _display(path)), path)


def read_text(path: Path) -> str:
    """The recipe file's text: a regular file of at most MAX_RECIPE_BYTES, UTF-8. Opened
    without blocking (a FIFO must not hang the build) and checked with fstat (a directory,
    a device or a symlink loop is one line, not a traceback or an endless read)."""
    where = _display(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        why = "a symlink loop" if e.errno == errno.ELOOP else e.strerror
        raise RecipeError(f"{where}: cannot open the recipe ({why})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise RecipeError(f"{where}: {kind}; a recipe is a .yaml file")
        chunks, size = [], 0
        while size <= MAX_RECIPE_BYTES and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise RecipeError(f"{where}: cannot read the recipe ({e.strerror})") from None
    finally:
        os.close(fd)
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{where}: larger than {MAX_RECIPE_BYTES >> 10} KiB; not a recipe")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RecipeError(
            f"{where}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; "
            "save the recipe as UTF-8"
        ) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without what no recipe needs and an attacker loves: anchors
    and aliases (billion laughs), nesting deeper than MAX_DEPTH (RecursionError) and
    integers longer than MAX_INT_DIGITS digits (int() refuses 4,300 and more)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                problem="anchors and aliases (&, *) are not allowed in a recipe",
                problem_mark=event.start_mark,
            )
        if getattr(event, "tag", None) not in (None, "!"):  # !!timestamp, !!python/...
            raise yaml.MarkedYAMLError(
                problem="explicit tags (!!type) are not allowed in a recipe",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.MarkedYAMLError(
                    problem=f"nested deeper than {MAX_DEPTH} levels",
                    problem_mark=event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    digits = re.sub(r"[^0-9a-fA-F]", "", str(node.value))
    if len(digits) > MAX_INT_DIGITS:
        raise yaml.MarkedYAMLError(
            problem=f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS})",
            problem_mark=node.start_mark,
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_text(text: str, where: str) -> Any:
    """The YAML document in `text`, with every problem as one RecipeError line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(e.problem or e.context or "invalid").split())[:120]
        raise RecipeError(f"{where}: not valid YAML: {at}{problem}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: not valid YAML: {' '.join(str(e).split())[:160]}") from None
    except RecursionError:
        raise RecipeError(f"{where}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as e:
        # a plain scalar that PyYAML's resolvers take for a date or a number it then
        # cannot build (prompt: 2024-13-45)
        detail = " ".join(str(e).split())[:80]
        raise RecipeError(f"{where}: not valid YAML: a value YAML cannot read ({detail})") from None

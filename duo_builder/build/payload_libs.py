"""The storyteller's libraries and data, built from pinned sources for the static payload.

Every image carries the same self-contained programs: `llama2` and `storyteller` linked
statically against glibc (the toolchain chroot's, gcc 15), with ALSA, eSpeak NG and
PocketSphinx built here from the sources pinned in payload_sources.toml:

- alsa-lib: static, no libdl (`--with-libdl=no`): every PCM plugin and config function is
  built in (no plugin is ever dlopen'ed, which a static glibc program could not do on a
  musl board); its configuration lives at ALSA_DIR, its own, so no base's alsa-lib files
  are needed (alsa.conf still reads the image's /etc/asound.conf);
- espeak-ng: the library cross-compiled (no audio output, sonic, klatt, speech-player,
  mbrola or async: the storyteller synthesizes synchronously into its own buffers); its
  data (phonemes, intonations, the dictionaries and voices the recipes name) compiled by a
  native build of the same source, since compiling it runs espeak-ng;
- pocketsphinx: the library, and the 7 files of the en-us acoustic model the storyteller
  reads (no language model: it decodes with its own grammar and dictionary).

The libraries are compiled once for plain rv64gc and linked into both ISAs' storytellers,
so the library code the Duo runs is exactly what the QEMU tests exercise; only the engine
is compiled per ISA (its kernels are what speed depends on).

The result is cached under build/payload-libs/<key>/ (sysroot/: headers, static libraries
and .pc files for the engine's Makefile; data/: the files the image holds, laid out like
it), the key a hash of the pins, this module's build script, the compiler and the voices.
"""

import hashlib
import json
import os
import re
import shutil
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from duo_builder.build import toolchain
from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer, exclusive_lock, sha256_file
from duo_builder.paths import BUILD, REPO

SOURCES_FILE = Path(__file__).with_name("payload_sources.toml")
SRC_CACHE = BUILD / "cache" / "payload-src"
OUT = BUILD / "payload-libs"
RECIPES = REPO / "recipes"
# Bump when the build below changes in a way the script's text does not show
RECIPE = "1"
# The libraries' code generation: plain RV64GC, run by the Duo's C906 and QEMU alike
LIB_CFLAGS = "-O2 -march=rv64gc -mabi=lp64d"

# Where the payload's data lives in every image (storyteller.conf points here)
SHARE = "/usr/share/storyteller"
ESPEAK_DATA = f"{SHARE}/espeak-ng-data"
ASR_MODEL = f"{SHARE}/en-us"
ALSA_DIR = f"{SHARE}/alsa"
# The acoustic model files PocketSphinx's `hmm` directory needs (asr_pocketsphinx.c)
ASR_MODEL_FILES = (
    "feat.params",
    "mdef",
    "means",
    "noisedict",
    "sendump",
    "transition_matrices",
    "variances",
)
# eSpeak NG's language-independent data
ESPEAK_COMMON = ("phondata", "phonindex", "phontab", "intonations")
# alsa-lib's configuration: alsa.conf includes every one of these (missing -> parse error)
ALSA_FILES = (
    "alsa.conf",
    "cards/aliases.conf",
    "pcm/center_lfe.conf",
    "pcm/default.conf",
    "pcm/dmix.conf",
    "pcm/dpl.conf",
    "pcm/dsnoop.conf",
    "pcm/front.conf",
    "pcm/hdmi.conf",
    "pcm/iec958.conf",
    "pcm/modem.conf",
    "pcm/rear.conf",
    "pcm/side.conf",
    "pcm/surround21.conf",
    "pcm/surround40.conf",
    "pcm/surround41.conf",
    "pcm/surround50.conf",
    "pcm/surround51.conf",
    "pcm/surround71.conf",
)

# Runs in the toolchain chroot: bash build.sh SRC WORK SYSROOT JOBS
BUILD_SCRIPT = r"""
set -eu
src=$1 work=$2 sysroot=$3 jobs=$4
host=riscv64-linux-gnu
cross_cc=riscv64-linux-gnu-gcc-15
export AR=riscv64-linux-gnu-ar RANLIB=riscv64-linux-gnu-ranlib STRIP=riscv64-linux-gnu-strip
mkdir -p "$work" "$sysroot/usr/lib/pkgconfig" "$sysroot/usr/include"
cd "$work"
step() { echo "payload-libs: $*" >&2; }
# logged LOG FUNCTION: run FUNCTION with errexit, its output in LOG (its tail on failure)
logged() {
  set +e
  ( set -e; "$2" ) >"$1" 2>&1
  rc=$?
  set -e
  if [ $rc != 0 ]; then
    tail -n 30 "$1" >&2
    echo "payload-libs: failed, log: $work/$1" >&2
    exit 1
  fi
}

alsa_lib() {
  tar -xjf "$src/$ALSA_TARBALL"
  cd "alsa-lib-$ALSA_VERSION"
  ./configure --host=$host CC=$cross_cc CFLAGS="$LIB_CFLAGS" --prefix=/usr \
    --enable-static --disable-shared --with-libdl=no --with-configdir="$ALSA_DIR" \
    --disable-ucm --disable-topology --disable-alisp --disable-rawmidi --disable-seq \
    --disable-hwdep --disable-old-symbols --disable-python --disable-aload
  make -j"$jobs"
  make install DESTDIR="$sysroot"
}

espeak_opts="--prefix=/usr --disable-shared --enable-static
  --without-async --without-mbrola --without-sonic --without-pcaudiolib --without-klatt
  --without-speechplayer --without-extdict-ru --without-extdict-cmn --without-extdict-yue"
espeak_unpack() {
  tar -xzf "$src/$ESPEAK_TARBALL"
  mv espeak-ng-*/ espeak-src
  (cd espeak-src && ./autogen.sh)
  cp -a espeak-src espeak-native
  mv espeak-src espeak-riscv64
}
espeak_riscv64() {
  cd espeak-riscv64
  # shellcheck disable=SC2086
  ./configure --host=$host CC=$cross_cc CXX=riscv64-linux-gnu-g++-15 CFLAGS="$LIB_CFLAGS" \
    $espeak_opts
  # the library's default data directory: the payload's (configure's --datadir is not it)
  make -j"$jobs" DATADIR="$SHARE/espeak-ng-data" src/libespeak-ng.la
  strings src/.libs/libespeak-ng.a | grep -qx "$SHARE/espeak-ng-data"
  cp src/.libs/libespeak-ng.a "$sysroot/usr/lib/"
  mkdir -p "$sysroot/usr/include/espeak-ng" "$sysroot/usr/include/espeak"
  cp src/include/espeak-ng/*.h "$sysroot/usr/include/espeak-ng/"
  cp src/include/espeak/*.h "$sysroot/usr/include/espeak/"
}
espeak_native() {
  cd espeak-native
  # shellcheck disable=SC2086
  ./configure CC=gcc-15 CXX=g++-15 CFLAGS=-O2 $espeak_opts
  make -j"$jobs" src/espeak-ng
  # shellcheck disable=SC2086
  make $ESPEAK_DICTS
}

pocketsphinx() {
  tar -xzf "$src/$PS_TARBALL"
  cmake -S "pocketsphinx-$PS_VERSION" -B ps-build -DCMAKE_SYSTEM_NAME=Linux \
    -DCMAKE_SYSTEM_PROCESSOR=riscv64 -DCMAKE_C_COMPILER=$cross_cc \
    -DCMAKE_AR="$(command -v $AR)" -DCMAKE_RANLIB="$(command -v $RANLIB)" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="$LIB_CFLAGS -DNDEBUG" \
    -DBUILD_SHARED_LIBS=OFF -DBUILD_GSTREAMER=OFF -DCMAKE_INSTALL_PREFIX=/usr
  cmake --build ps-build --target pocketsphinx -j "$jobs"
  cp ps-build/libpocketsphinx.a "$sysroot/usr/lib/"
  cp -r "pocketsphinx-$PS_VERSION/include/." ps-build/include/. "$sysroot/usr/include/"
}

step "alsa-lib $ALSA_VERSION (static, plugins built in, no libdl)"
logged alsa-lib.log alsa_lib
step "espeak-ng $ESPEAK_VERSION (library for riscv64, data with a native build)"
logged espeak-autogen.log espeak_unpack
logged espeak-riscv64.log espeak_riscv64
logged espeak-native.log espeak_native
step "pocketsphinx $PS_VERSION (library for riscv64)"
logged pocketsphinx.log pocketsphinx
step "done"
"""

PC_FILES = {
    "espeak-ng": "Name: espeak-ng\nDescription: eSpeak NG (static, payload)\nVersion: {v}\n"
    "Libs: -L${{libdir}} -lespeak-ng\nLibs.private: -lm -lpthread\nCflags: -I${{includedir}}\n",
    "pocketsphinx": "Name: pocketsphinx\nDescription: PocketSphinx (static, payload)\n"
    "Version: {v}\nLibs: -L${{libdir}} -lpocketsphinx\nLibs.private: -lm\n"
    "Cflags: -I${{includedir}}\n",
}
PC_PREFIX = "prefix=/usr\nlibdir=${prefix}/lib\nincludedir=${prefix}/include\n"


class PayloadLibsError(BuildError):
    """The payload's libraries or data could not be fetched or built; the message says why."""


@dataclass(frozen=True)
class Source:
    name: str
    version: str
    url: str
    sha256: str

    @property
    def tarball(self) -> str:
        return self.url.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Built:
    """A built payload: sysroot/ for linking, data/ laid out like the image."""

    root: Path
    key: str

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def data_files(self) -> list[str]:
        """Every data file's path in the image, sorted."""
        return sorted("/" + str(p.relative_to(self.data)) for p in _files(self.data))

    def pkg_config_env(self) -> dict[str, str]:
        """Environment for riscv64-linux-gnu-pkg-config to find these libraries only."""
        return {
            "PKG_CONFIG_LIBDIR": str(self.sysroot / "usr/lib/pkgconfig"),
            "PKG_CONFIG_SYSROOT_DIR": str(self.sysroot),
        }


def sources() -> dict[str, Source]:
    """The pinned sources (payload_sources.toml)."""
    try:
        data = tomllib.loads(SOURCES_FILE.read_text())
        return {
            name: Source(name, s["version"], s["url"], s["sha256"])
            for name, s in data["sources"].items()
        }
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise PayloadLibsError(f"{SOURCES_FILE}: {e}; fix the file (see its comments)") from None


def recipe_voices() -> list[str]:
    """The eSpeak voices (language+variant) the recipes name, sorted."""
    voices = set()
    for path in sorted(RECIPES.glob("*.yaml")):
        m = re.search(r"(?m)^voice:\s*\n\s+name:\s*(\S+)", path.read_text())
        voices.add(m[1] if m else "en")
    return sorted(voices)


def espeak_files(voices: list[str]) -> tuple[list[str], list[str]]:
    """(dictionaries to compile, voice and variant files) for `voices` (e.g. en+m3): paths
    relative to espeak-ng-data/."""
    dicts, voice_files = set(), set()
    for voice in voices:
        language, _, variant = voice.partition("+")
        dicts.add(f"{language.split('-')[0]}_dict")
        voice_files.add(f"lang/{language}")  # resolved to lang/<family>/<name> when built
        if variant:
            voice_files.add(f"voices/!v/{variant}")
    return sorted(dicts), sorted(voice_files)


def cache_key(voices: list[str]) -> str:
    h = hashlib.sha256()
    compiler = toolchain.manifest().get("compiler") or ""
    for part in (RECIPE, SOURCES_FILE.read_text(), BUILD_SCRIPT, LIB_CFLAGS, compiler, *voices):
        h.update(part.encode() + b"\0")
    h.update(json.dumps([ASR_MODEL_FILES, ALSA_FILES, ESPEAK_COMMON]).encode())
    return h.hexdigest()[:16]


def ensure(progress: bool = True) -> Built:
    """The built payload libraries and data (built on first use, then from the cache)."""
    voices = recipe_voices()
    toolchain.ensure_sid_chroot()
    key = cache_key(voices)
    built = Built(OUT / key, key)
    if (built.root / "manifest.json").exists():
        return built
    OUT.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(OUT / ".lock"):
        if not (built.root / "manifest.json").exists():
            _build(built, voices, progress)
    return built


def recorded() -> dict:
    """What an image's manifest records of the payload's sources (payload_sources.toml)."""
    return {
        "pinned_in": str(SOURCES_FILE.relative_to(REPO)),
        "lib_cflags": LIB_CFLAGS,
        "sources": {
            n: {k: v for k, v in vars(s).items() if k != "name"} for n, s in sources().items()
        },
    }


def manifest(built: Built) -> dict:
    """What the manifest records: sources (version, url, sha256) and the data files."""
    return json.loads((built.root / "manifest.json").read_text())


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"payload-libs: {msg}", file=sys.stderr, flush=True)


def fetch_sources(progress: bool = True) -> dict[str, Path]:
    """Each pinned source in build/cache/payload-src/, downloaded once and checked."""
    SRC_CACHE.mkdir(parents=True, exist_ok=True)
    paths = {}
    for s in sources().values():
        dst = SRC_CACHE / s.tarball
        if not dst.exists():
            _say(progress, f"downloading {s.url}")
            try:
                with urllib.request.urlopen(s.url, timeout=120) as r, atomic_writer(dst) as out:
                    shutil.copyfileobj(r, out)
            except (urllib.error.URLError, OSError) as e:
                raise PayloadLibsError(
                    f"cannot download {s.name} {s.version} from {s.url} "
                    f"({getattr(e, 'reason', e)}); pinned in {SOURCES_FILE}"
                ) from None
        got = sha256_file(dst)
        if got != s.sha256:
            dst.unlink()
            raise PayloadLibsError(
                f"{s.url} has sha256 {got}, {SOURCES_FILE} pins {s.sha256}: "
                "the download was removed; check the pin"
            )
        paths[s.name] = dst
    return paths


def _build(built: Built, voices: list[str], progress: bool) -> None:
    start = time.monotonic()
    srcs = sources()
    fetch_sources(progress)
    toolchain.ensure_chroot_packages(toolchain.PAYLOAD_BUILD_PACKAGES)
    dicts, voice_files = espeak_files(voices)
    tmp = OUT / f".{built.key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "work").mkdir(parents=True)
    script = tmp / "build.sh"
    script.write_text(BUILD_SCRIPT)
    env = {
        "LIB_CFLAGS": LIB_CFLAGS,
        "SHARE": SHARE,
        "ALSA_DIR": ALSA_DIR,
        "ALSA_VERSION": srcs["alsa-lib"].version,
        "ALSA_TARBALL": srcs["alsa-lib"].tarball,
        "ESPEAK_VERSION": srcs["espeak-ng"].version,
        "ESPEAK_TARBALL": srcs["espeak-ng"].tarball,
        "ESPEAK_DICTS": " ".join(f"espeak-ng-data/{d}" for d in dicts),
        "PS_VERSION": srcs["pocketsphinx"].version,
        "PS_TARBALL": srcs["pocketsphinx"].tarball,
    }
    _say(progress, f"building alsa-lib, espeak-ng and pocketsphinx (once, ~6 min) in {tmp}")
    jobs = str(os.cpu_count() or 1)
    sysroot = tmp / "sysroot"
    try:
        argv = ["nice", "bash", str(script), str(SRC_CACHE), str(tmp / "work"), str(sysroot), jobs]
        result = toolchain.run_in_chroot(argv, env=env, capture_output=not progress)
        if result.returncode != 0:
            tail = "" if progress else "\n" + (result.stdout + result.stderr)[-3000:]
            raise PayloadLibsError(
                f"building the payload libraries failed (exit {result.returncode}); logs in "
                f"{tmp / 'work'}{tail}"
            )
        for name, text in PC_FILES.items():
            pc = PC_PREFIX + text.format(v=srcs[name].version)
            (sysroot / f"usr/lib/pkgconfig/{name}.pc").write_text(pc)
        data = _collect_data(tmp, dicts, voice_files, srcs)
        info = {
            "key": built.key,
            "lib_cflags": LIB_CFLAGS,
            "compiler": toolchain.manifest().get("compiler"),
            "voices": voices,
            "sources": {n: vars(s) for n, s in srcs.items()},
            "data": data,
            "build_seconds": round(time.monotonic() - start),
        }
        (tmp / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(tmp / "work")
        shutil.rmtree(built.root, ignore_errors=True)
        os.rename(tmp, built.root)
        for old in OUT.iterdir():  # builds from earlier inputs, and failed builds' logs
            if old != built.root and old.name != ".lock":
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if not isinstance(sys.exc_info()[1], PayloadLibsError):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, f"built in {time.monotonic() - start:.0f} s: {built.root}")


def _collect_data(
    tmp: Path, dicts: list[str], voice_files: list[str], srcs: dict[str, Source]
) -> dict[str, dict]:
    """Copy the data files the image holds into tmp/data/ (laid out like the image);
    returns path -> {size, sha256}."""
    work, data = tmp / "work", tmp / "data"
    espeak = work / "espeak-native" / "espeak-ng-data"
    copies: list[tuple[Path, str]] = []
    for name in (*ESPEAK_COMMON, *dicts):
        copies.append((espeak / name, f"{ESPEAK_DATA}/{name}"))
    for rel in voice_files:
        if rel.startswith("lang/"):
            language = rel.removeprefix("lang/")
            found = sorted((espeak / "lang").rglob(language))
            found = [p for p in found if p.is_file()]
            if not found:
                raise PayloadLibsError(
                    f"no eSpeak NG language {language!r} in espeak-ng "
                    f"{srcs['espeak-ng'].version}: fix voice.name in the recipes"
                )
            rel = str(found[0].relative_to(espeak))
        copies.append((espeak / rel, f"{ESPEAK_DATA}/{rel}"))
    model = work / f"pocketsphinx-{srcs['pocketsphinx'].version}" / "model/en-us/en-us"
    for name in ASR_MODEL_FILES:
        copies.append((model / name, f"{ASR_MODEL}/{name}"))
    alsa = tmp / "sysroot" / ALSA_DIR.lstrip("/")
    for name in ALSA_FILES:
        copies.append((alsa / name, f"{ALSA_DIR}/{name}"))
    out = {}
    for src, dst in copies:
        if not src.is_file():
            raise PayloadLibsError(f"the payload build made no {src} (for {dst})")
        target = data / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        out[dst] = {"size": target.stat().st_size, "sha256": sha256_file(target)}
    return dict(sorted(out.items()))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())

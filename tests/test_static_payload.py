"""The self-contained payload: static riscv64 `llama2` and `storyteller` with their own
alsa-lib, espeak-ng and pocketsphinx (built here from pinned sources), and the voice and
speech-model data at fixed paths; the same listing in every recipe's image.

The rv64gcv programs run under qemu-riscv64 with no sysroot at all (nothing of the host's
or the toolchain's libraries is reachable): they tell a story, speak it into a WAV, play
it through the payload's own ALSA configuration and hear a request eSpeak NG spoke on the
host. The c906 build cannot run here (no QEMU has XTheadVector): its disassembly must
show the T-Head vector instructions of the engine's fast kernels."""

import re
import subprocess
import wave
from pathlib import Path

import pytest

from duo_builder.build import engine, payload_libs, toolchain
from duo_builder.build.hostdeps import ensure_commands, ensure_packages
from duo_builder.image import payload, recipe
from duo_builder.paths import ENGINE_SRC, MODELS

MODEL, TOK = MODELS / "stories260K.bin", MODELS / "tok512.bin"
DICT = ENGINE_SRC / "storyteller" / "story.dict"
ISAS = ("rv64gcv", "c906")
RECIPES = ("qemu-virt-64m", "duo-64m", "duo-64m-remaster")


@pytest.fixture(scope="module")
def libs() -> payload_libs.Built:
    return payload_libs.ensure()


@pytest.fixture(scope="module")
def builds(libs) -> dict[str, Path]:
    """build/<isa>/ for both ISAs (llama2 and storyteller, linked against `libs`)."""
    return {isa: engine.build(isa).parent for isa in ISAS}


def data_path(libs: payload_libs.Built, image_path: str) -> Path:
    return libs.data / image_path.lstrip("/")


def qemu(*argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    """A rv64gcv program under qemu-riscv64 without -L: a dynamic one could not even start."""
    cmd = [*engine.runner("rv64gcv"), *map(str, argv)]
    assert "-L" not in cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def config(tmp_path: Path, libs, **extra) -> Path:
    """The image's settings, with the payload's data where this machine has it."""
    settings = {
        "model": MODEL,
        "tokenizer": TOK,
        "asr_dict": DICT,
        "asr_model": data_path(libs, payload_libs.ASR_MODEL),
        "espeak_data": data_path(libs, payload_libs.ESPEAK_DATA),
        "voice": "en+m3",
        "seed": 7,
        "steps": 60,
        **extra,
    }
    path = tmp_path / "storyteller.conf"
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getnframes() / w.getframerate()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("program", ("llama2", "storyteller"))
def test_programs_are_static(builds, isa, program):
    """No program interpreter, no shared library: they run on glibc and musl images alike."""
    ensure_commands({"readelf": "binutils"}, "checking the payload's binaries")
    binary = builds[isa] / program
    headers = subprocess.run(
        ["readelf", "-lhdW", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    assert "Machine:                           RISC-V" in headers
    assert "INTERP" not in headers, f"{binary} names a program interpreter"
    assert "(NEEDED)" not in headers, f"{binary} needs shared libraries"


def test_llama2_tells_a_story(builds):
    r = qemu(builds["rv64gcv"] / "llama2", MODEL, "-z", TOK, "-n", 60, "-s", 7, "-i", "Once")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once") and len(r.stdout.split()) > 10
    assert re.search(r"achieved tok/s: [0-9.]+", r.stderr)


def test_storyteller_speaks_into_a_wav(builds, libs, tmp_path):
    wav = tmp_path / "story.wav"
    cfg = config(tmp_path, libs)
    r = qemu(builds["rv64gcv"] / "storyteller", "--config", cfg, "--prompt", "Lily", "--wav", wav)
    assert r.returncode == 0, r.stderr
    words = len(r.stdout.split())
    assert words > 10 and wav_seconds(wav) > words / 5, (words, wav_seconds(wav))


def test_storyteller_plays_through_its_own_alsa_configuration(builds, libs, tmp_path):
    """The payload's alsa.conf (not the host's, not Debian's): `null` and `file` PCMs come
    from plugins built into the static alsa-lib, and so does `@func getenv`, which the
    Duo's asound.conf.usb uses to pick the card; the file plugin receives the samples."""
    raw = tmp_path / "played.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(
        'pcm.story { type file slave.pcm "null" format "raw"\n'
        '  file { @func getenv vars [ STORY_RAW ] default "/nonexistent/x" } }\n'
    )
    alsa = data_path(libs, payload_libs.ALSA_DIR)
    env = {
        "PATH": "/usr/bin:/bin",
        "STORY_RAW": str(raw),
        "ALSA_CONFIG_DIR": str(alsa),
        # alsa.conf reads this list of files; the payload's alsa.conf first, as in the image
        "ALSA_CONFIG_PATH": f"{alsa / 'alsa.conf'}:{conf}",
    }
    cfg = config(tmp_path, libs, steps=30)
    binary = builds["rv64gcv"] / "storyteller"
    r = qemu(binary, "--config", cfg, "--prompt", "Lily", "--device", "story", env=env)
    assert r.returncode == 0, r.stderr
    wav = tmp_path / "same.wav"
    r2 = qemu(binary, "--config", cfg, "--prompt", "Lily", "--wav", wav)
    assert r2.returncode == 0, r2.stderr
    with wave.open(str(wav)) as w:
        want = w.readframes(w.getnframes())
    assert len(want) > 10000 and raw.read_bytes() == want


def test_storyteller_hears_a_request_spoken_on_the_host(builds, libs, tmp_path):
    ensure_packages(["espeak-ng"], "speaking a request for the storyteller to hear")
    request = tmp_path / "request.wav"
    text = "tell me a story about a dragon"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(request), text], check=True)
    cfg = config(tmp_path, libs, steps=40)
    binary = builds["rv64gcv"] / "storyteller"
    r = qemu(binary, "--config", cfg, "--mic-wav", request, "--wav", tmp_path / "s.wav")
    assert r.returncode == 0, r.stderr
    assert f'heard "{text}"' in r.stderr
    assert r.stdout.startswith("Once upon a time, there was a little dragon")


def test_c906_build_runs_the_fast_kernels(builds, capsys):
    """Both c906 programs carry the engine's XTheadVector kernels (th.v* instructions)."""
    counts = {}
    for program in ("llama2", "storyteller"):
        p = toolchain.run_in_chroot([toolchain.OBJDUMP, "-d", str(builds["c906"] / program)])
        assert p.returncode == 0, p.stderr
        counts[program] = p.stdout.count("\tth.v")
    with capsys.disabled():
        print(f"\nc906 th.v* instructions: {counts}")
    assert all(n > 100 for n in counts.values()), counts


def real_payload(name: str, builds, libs, tmp_path: Path) -> payload.Payload:
    """The recipe's payload with the real programs and data (a stand-in model)."""
    r = recipe.load(name)
    model = tmp_path / "model.bin"
    model.write_bytes(b"stand-in")
    d = builds[r.engine_target]
    products = payload.Products(d / "llama2", d / "storyteller", model, TOK, data=libs.data)
    return payload.declare(payload.settings(r), products)


def test_every_recipe_holds_the_same_payload(builds, libs, tmp_path, capsys):
    payloads = {name: real_payload(name, builds, libs, tmp_path) for name in RECIPES}
    listings = {name: p.listing() for name, p in payloads.items()}
    assert listings["duo-64m"] == listings["qemu-virt-64m"] == listings["duo-64m-remaster"]
    paths = dict(listings["qemu-virt-64m"])
    for name in payload_libs.ASR_MODEL_FILES:
        assert f"{payload_libs.ASR_MODEL}/{name}" in paths
    for name in ("phondata", "phontab", "phonindex", "intonations", "en_dict", "voices/!v/m3"):
        assert f"{payload_libs.ESPEAK_DATA}/{name}" in paths
    assert f"{payload_libs.ALSA_DIR}/alsa.conf" in paths
    for name, p in payloads.items():
        assert not p.absent(), (name, p.absent())
    conf = next(f for f in payloads["duo-64m"].files if f.path == "/etc/storyteller.conf")
    assert f"espeak_data = {payload_libs.ESPEAK_DATA}\n" in conf.source.decode()
    assert f"asr_model = {payload_libs.ASR_MODEL}\n" in conf.source.decode()
    # file by file, per ISA (the model and tokenizer follow the recipe: left out here)
    sizes = {isa: {} for isa in ISAS}
    for isa, name in (("rv64gcv", "qemu-virt-64m"), ("c906", "duo-64m")):
        for e in payloads[name].manifest():
            if not e["path"].endswith(("model.bin", "tokenizer.bin")):
                sizes[isa][e["path"]] = e["size"]
    with capsys.disabled():
        print(f"\n{'bytes rv64gcv':>14} {'bytes c906':>11}  path")
        for path in sorted(sizes["c906"]):
            print(f"{sizes['rv64gcv'][path]:>14} {sizes['c906'][path]:>11}  {path}")
        totals = [sum(s.values()) for s in sizes.values()]
        print(f"{totals[0]:>14} {totals[1]:>11}  total (without model and tokenizer)")

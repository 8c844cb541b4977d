"""The offline image `qemu-virt-64m`, built and booted: a 64 MB RISC-V QEMU machine with a
kernel from Debian's linux-source-6.12, sid's riscv64 userland and our payload.

The guest tells one story from a prompt on the kernel command line, speaks it with eSpeak
into a WAV on a second disk, reports its memory and powers off. Slow (the kernel takes
minutes once, then comes from build/cache): deselect with `-m "not slow"`."""

import base64
import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from duo_builder.build import engine
from duo_builder.image import payload, recipe
from duo_builder.image.bases import debian as qi
from duo_builder.paths import BUILD

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time"
STEPS, SEED = 120, 7
EPOCH = 1_700_000_000
SIZE_MB = 128
BOOT_TIMEOUT = 240.0


def config_with(**overrides: str) -> str:
    """The shipped storyteller.conf with some values replaced (keys must exist in it)."""
    text = payload.STORYTELLER_CONF.read_text()
    for key, value in overrides.items():
        text, n = re.subn(rf"(?m)^{key} =.*$", f"{key} = {value}", text)
        assert n == 1, f"storyteller.conf has no single '{key} =' line"
    return text


@pytest.fixture(scope="session")
def qemu_kernel() -> Path:
    """The guest kernel, built once (~4 min) and then taken from build/cache."""
    return qi.build_kernel(BUILD / "qemu-virt-64m")


@pytest.fixture(scope="session")
def rootfs_base() -> qi.RootfsBase:
    return qi.build_rootfs()


@pytest.fixture(scope="session")
def guest_storyteller() -> Path | None:
    """The riscv64 storyteller, if the rv64gcv target builds it yet (else the guest's
    S99storyteller falls back to llama2 + the espeak-ng command)."""
    if "storyteller" not in engine.target("rv64gcv").programs:
        return None
    engine.build("rv64gcv")
    return engine.binary("rv64gcv", "storyteller")


@pytest.fixture(scope="session")
def image_inputs(rv64gcv_engine, guest_storyteller, stories260k, rootfs_base) -> dict:
    model, tokenizer = stories260k
    settings = payload.Settings(
        # the reference path: the guest's story must be the host engine's, token for token
        config_text=config_with(path="ref"),
        autostart=payload.autostart_defaults(recipe.load("qemu-virt-64m")),
        audio="none",
    )
    missing = "" if guest_storyteller else "the rv64gcv target builds no storyteller"
    products = payload.Products(rv64gcv_engine, guest_storyteller, model, tokenizer, missing)
    return dict(
        payload=payload.declare(settings, products),
        source_date_epoch=EPOCH,
        size_mb=SIZE_MB,
        base=rootfs_base,
    )


@pytest.fixture(scope="session")
def image(image_inputs, tmp_path_factory) -> qi.ImageResult:
    return qi.build_image(**image_inputs, out=tmp_path_factory.mktemp("image") / "a.img")


@pytest.fixture(scope="session")
def booted(image, qemu_kernel, tmp_path_factory) -> qi.BootResult:
    return qi.boot(
        image.path,
        qemu_kernel,
        prompt=PROMPT,
        steps=STEPS,
        seed=SEED,
        timeout=BOOT_TIMEOUT,
        results_dir=tmp_path_factory.mktemp("boot"),
    )


@pytest.fixture(scope="session")
def host_story(host_engine, stories260k) -> str:
    model, tokenizer = stories260k
    args = [host_engine, model, "-z", tokenizer, "-n", STEPS, "-s", SEED, "-i", PROMPT]
    args += ["-t", "1.0", "-p", "0.9", "-k", "ref"]
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_guest_is_ready_and_tells_the_story(booted, host_story):
    assert "storyteller: ready" in booted.console
    assert booted.exit_status == 0, booted.console[-3000:]
    assert booted.story is not None, f"no story.txt on the results disk: {booted.files}"
    # the very same tokens as the host engine's reference path for the requested length,
    # then the last sentence finished (the storyteller never stops mid-sentence)
    guest, host = booted.story.strip(), host_story.strip()
    assert guest.startswith(host), (guest[-100:], host[-100:])
    assert guest == host or re.search(r"[.!?][\"']?$", guest), guest[-100:]
    assert len(booted.story.split()) > 30


def test_generation_speed_is_reported(booted, guest_storyteller):
    if guest_storyteller is None:
        assert re.search(r"achieved tok/s: [0-9.]+", booted.console)
    else:
        m = re.search(r"storyteller: generation: ([0-9.]+) tok/s \((\d+) tokens\)", booted.console)
        assert m, booted.console[-2000:]
        # the steps asked for, and up to 48 more that finish the last sentence
        assert float(m[1]) > 0 and STEPS <= int(m[2]) <= STEPS + 48
        assert re.search(r"storyteller: memory: peak RSS [0-9.]+ MB", booted.console)


def test_espeak_in_the_guest_wrote_the_wav(booted):
    wav = booted.files.get("story.wav")
    assert wav is not None, f"no story.wav on the results disk: {booted.files}"
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        assert w.getframerate() == 22050  # eSpeak NG's native rate
        seconds = w.getnframes() / w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    words = len(booted.story.split())
    # 150 words a minute plus pauses: a generous band around 2.5 words a second
    assert 0.3 * words / 2.5 < seconds < 3.0 * words / 2.5, (words, seconds)
    assert float(np.sqrt(np.mean(pcm**2))) > 500, "the WAV is (nearly) silent"


def test_memory_is_reported_before_and_during_generation(booted):
    assert booted.mem_total_kb is not None and booted.mem_available_before_kb is not None
    # 64 MB of RAM, a ~4 MB kernel, no initramfs
    assert 50_000 < booted.mem_total_kb <= 65_536
    assert 40_000 < booted.mem_available_before_kb < booted.mem_total_kb
    assert booted.mem_available_during_kb, "no MemAvailable sample during generation"
    assert 30_000 < booted.mem_available_min_kb <= booted.mem_total_kb
    print(
        f"\nguest: MemTotal {booted.mem_total_kb} kB, MemAvailable {booted.mem_available_before_kb}"
        f" kB before, min {booted.mem_available_min_kb} kB during; boot {booted.seconds:.1f} s"
    )


def test_image_is_reproducible(image, image_inputs, tmp_path):
    again = qi.build_image(**image_inputs, out=tmp_path / "b.img")
    assert again.sha256 == image.sha256
    assert again.files == image.files
    assert image.size == SIZE_MB << 20
    payload = {f.path for f in image.files}
    assert {"/usr/bin/llama2", "/etc/init.d/S99storyteller", "/etc/storyteller.conf"} <= payload
    assert "/usr/share/storyteller/model.bin" in payload


def test_another_epoch_gives_another_image(image, image_inputs, tmp_path):
    other = qi.build_image(
        **{**image_inputs, "source_date_epoch": EPOCH + 1}, out=tmp_path / "c.img"
    )
    assert other.sha256 != image.sha256


def test_guest_plays_through_alsa(image, qemu_kernel, guest_storyteller, tmp_path):
    """Without a WAV file the storyteller speaks into the guest's snd-aloop card, at the
    sound card's pace: telling takes at least as long as the audio."""
    if guest_storyteller is None:
        pytest.skip("the rv64gcv target does not build the storyteller yet")
    r = qi.boot(
        image.path, qemu_kernel, prompt=PROMPT, steps=40, seed=SEED, play=True,
        timeout=BOOT_TIMEOUT, results_dir=tmp_path,
    )  # fmt: skip
    assert r.exit_status == 0, r.console[-3000:]
    assert "playing through ALSA:  0 [Loopback" in r.console
    audio = float(re.search(r"tts: [0-9.]+ s CPU for ([0-9.]+) s of audio", r.console)[1])
    told = int(re.search(r"storyteller: told in (\d+) s", r.console)[1])
    assert audio > 2 and told >= int(audio)
    assert "story.wav" not in r.files


def test_image_defaults_start_a_story_without_a_prompt(image_inputs, qemu_kernel, tmp_path):
    """/etc/default/storyteller (a recipe's autostart) tells S99storyteller what to do when
    the command line gives no prompt."""
    defaults = b"STORYTELLER_MODE=story\nSTORYTELLER_PROMPT='The dog'\n"
    with_defaults = image_inputs["payload"].with_source("/etc/default/storyteller", defaults)
    img = qi.build_image(
        **{**image_inputs, "payload": with_defaults}, out=tmp_path / "defaults.img"
    )
    assert "/etc/default/storyteller" in {f.path for f in img.files}
    r = qi.boot(img.path, qemu_kernel, prompt=None, steps=30, timeout=BOOT_TIMEOUT,
                results_dir=tmp_path / "boot")  # fmt: skip
    assert "storyteller: ready" in r.console and r.exit_status == 0, r.console[-2000:]
    assert r.story is not None and r.story.startswith("The dog")


def test_without_the_storyteller_llama2_tells_it(image_inputs, qemu_kernel, tmp_path):
    """S99storyteller's fallback for images without the storyteller binary: llama2 writes
    the story (the guest has no espeak-ng command to speak it: the payload is static)."""
    bare = image_inputs["payload"].without("/usr/bin/storyteller", "the fallback's test")
    img = qi.build_image(**{**image_inputs, "payload": bare}, out=tmp_path / "bare.img")
    assert "/usr/bin/storyteller" not in {f.path for f in img.files}
    r = qi.boot(img.path, qemu_kernel, prompt=PROMPT, steps=40, seed=SEED,
                timeout=BOOT_TIMEOUT, results_dir=tmp_path / "boot")  # fmt: skip
    assert r.exit_status == 0, r.console[-2000:]
    assert "storyteller not installed" in r.console
    assert re.search(r"achieved tok/s: [0-9.]+", r.console)
    assert r.story is not None and r.story.startswith(PROMPT)


def test_every_audio_route_has_an_alsa_configuration():
    for audio in ("usb", "none"):
        assert "pcm.!default" in payload.asound_conf(audio).read_text()
    with pytest.raises(payload.PayloadError, match="known: none, usb"):
        payload.asound_conf("hdmi")


def test_kernel_config_check_catches_dropped_settings():
    fragment = "CONFIG_SND_ALOOP=y\nCONFIG_MODULES=n\n"
    qi.check_kernel_config("CONFIG_SND_ALOOP=y\n# CONFIG_MODULES is not set\n", fragment)
    with pytest.raises(qi.QemuImageError, match="CONFIG_SND_ALOOP=y"):
        qi.check_kernel_config("# CONFIG_SND_ALOOP is not set\n", fragment)


def test_prompt_goes_on_the_kernel_command_line():
    line = qi.kernel_command_line("A cat", steps=10, seed=3)
    assert "storyteller.prompt64=QSBjYXQ=" in line and "storyteller.steps=10" in line
    assert "root=/dev/vda" in line and "panic=-1" in line
    for text in ('She said "hi"', "two\nlines", "it's $HOME; `x` \\ é"):
        (arg,) = [a for a in qi.kernel_command_line(text).split() if "prompt64=" in a]
        assert base64.b64decode(arg.split("=", 1)[1]).decode() == text
    with pytest.raises(qi.QemuImageError, match="at most 512 bytes"):
        qi.kernel_command_line("x" * 600)


def test_storage_reads_are_measured(image, qemu_kernel, rv64gcv_engine, stories260k, tmp_path):
    """`invoke bench --storage` in the real guest (SSH, mem=60M, the faithful file on a third
    disk): the disk's own counters, the engine's faults and RSS, parsed from the guest."""
    from duo_builder.bench import storage
    from duo_builder.model.convert import convert

    model, tokenizer = stories260k
    faithful = convert(model, tmp_path / "stories260K-faithful.bin", "faithful")
    runs = storage.measure(image.path, qemu_kernel, faithful, tokenizer, rv64gcv_engine,
                           steps=(16, 48), work=tmp_path)  # fmt: skip
    for r in runs:  # caches dropped before each: the file came from the disk
        assert r.disk_sectors * storage.SECTOR >= faithful.stat().st_size // 2, r
        assert r.disk_reads > 0 and r.peak_rss_kb > 0 and r.stats.startswith("faithful: steps")
        assert 0 < r.mem_available_min_kb < r.mem_total_kb
        assert 0 < r.mem_available_before_kb < r.mem_total_kb
        assert r.mem_total_kb < 57 * 1024  # mem=60M: the Duo's ~55 MB, not the guest's 59
    assert runs[0].story_sha != runs[1].story_sha
    assert runs[1].samples and runs[1].samples[-1][2] <= runs[1].disk_sectors  # every second
    reads = storage.per_token(runs, "test")
    storage.write(tmp_path / "storage.json", "faithful", reads, runs)
    assert storage.load_measured("faithful", tmp_path / "storage.json") == reads

"""The storyteller, for real: eSpeak speaking the story into a WAV file or through ALSA,
PocketSphinx hearing a request that eSpeak spoke, and every bad input a clear message."""

import re
import subprocess
import wave

import numpy as np
import pytest

from duo_builder.paths import ENGINE_SRC, MODELS

MODEL, TOK = MODELS / "stories260K.bin", MODELS / "tok512.bin"
DICT = ENGINE_SRC / "storyteller" / "story.dict"
TIMING = [
    r"generation: [0-9.]+ tok/s",
    r"tts: [0-9.]+ s CPU for [0-9.]+ s of audio",
    r"first sound after [0-9.]+ s",
    r"memory: peak RSS [0-9.]+ MB",
]


def base_args(tmp_path, *extra: str) -> list[str]:
    return ["--config", str(write_config(tmp_path)), *extra]


def write_config(tmp_path, **overrides: str):
    settings = {"model": MODEL, "tokenizer": TOK, "asr_dict": DICT, "seed": 7, "steps": 120}
    settings.update(overrides)
    path = tmp_path / "storyteller.conf"
    path.write_text("# test settings\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


def run(binary, args, runner=(), **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*runner, str(binary), *args], capture_output=True, text=True, timeout=300, **kw
    )


def wav_stats(path) -> tuple[float, float]:
    """(seconds, RMS) of a mono 16-bit WAV."""
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return w.getnframes() / w.getframerate(), float(np.sqrt(np.mean(pcm**2)))


def assert_spoken_story(result, wav, capsys=None) -> str:
    assert result.returncode == 0, result.stderr
    for pattern in TIMING:
        assert re.search(pattern, result.stderr), f"missing timing line {pattern}"
    seconds, rms = wav_stats(wav)
    words = len(result.stdout.split())
    # eSpeak at 150 words a minute; pauses and numbers stretch it, so a generous band
    assert words > 20
    assert 0.3 * words / 2.5 < seconds < 3.0 * words / 2.5, (words, seconds)
    assert rms > 500, "the WAV is (nearly) silent"
    reported = float(re.search(r"for ([0-9.]+) s of audio", result.stderr).group(1))
    assert abs(reported - seconds) < 0.05
    if capsys:
        with capsys.disabled():
            print(
                "\n"
                + "\n".join(
                    line for line in result.stderr.splitlines() if line.startswith("storyteller:")
                )
            )
            print(f"WAV {wav.stat().st_size} bytes, {seconds:.1f} s, {words} words")
    return result.stdout


def test_prompt_to_wav(storyteller, tmp_path, capsys):
    wav = tmp_path / "story.wav"
    r = run(storyteller, base_args(tmp_path, "--prompt", "Once upon a time", "--wav", str(wav)))
    text = assert_spoken_story(r, wav, capsys)
    assert text.startswith("Once upon a time")
    assert not (tmp_path / "story.wav.partial").exists()


def test_alsa_playback_through_the_file_plugin(storyteller, tmp_path):
    """A real ALSA PCM with no sound card: the `file` plugin writes what is played."""
    raw = tmp_path / "played.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f'pcm.story {{ type file slave {{ pcm {{ type null }} }} file "{raw}" format "raw" }}\n'
    )
    env = {"ALSA_CONFIG_PATH": str(conf), "PATH": "/usr/bin:/bin"}
    r = run(
        storyteller, base_args(tmp_path, "--prompt", "Lily and Ben", "--device", "story"), env=env
    )
    assert r.returncode == 0, r.stderr
    wav = tmp_path / "same.wav"
    r2 = run(storyteller, base_args(tmp_path, "--prompt", "Lily and Ben", "--wav", str(wav)))
    assert r2.returncode == 0, r2.stderr
    with wave.open(str(wav)) as w:
        want = w.readframes(w.getnframes())
    assert len(want) > 10000
    assert raw.read_bytes() == want, "ALSA received exactly the samples eSpeak made"


def espeak_wav(tmp_path, text: str):
    wav = tmp_path / "request.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True)
    return wav


def test_spoken_request_round_trip(storyteller, tmp_path):
    request = espeak_wav(tmp_path, "tell me a story about a dragon")
    out = tmp_path / "story.wav"
    r = run(storyteller, base_args(tmp_path, "--mic-wav", str(request), "--wav", str(out)))
    assert r.returncode == 0, r.stderr
    assert 'heard "tell me a story about a dragon"' in r.stderr
    assert r.stdout.startswith("Once upon a time, there was a little dragon")
    assert wav_stats(out)[1] > 500


@pytest.mark.parametrize(
    "spoken,opening",
    [
        ("tell me a story about lily and a cat", "Once upon a time, Lily had a cat"),
        ("a story about a robot", "Once upon a time"),
        ("tell me a story about the moon", "Once upon a time"),
    ],
)
def test_more_spoken_requests(storyteller, tmp_path, spoken, opening):
    request = espeak_wav(tmp_path, spoken)
    r = run(
        storyteller,
        base_args(
            tmp_path, "--mic-wav", str(request), "--wav", str(tmp_path / "s.wav"), "--steps", "30"
        ),
    )
    assert r.returncode == 0, r.stderr
    assert f'heard "{spoken}"' in r.stderr
    assert r.stdout.startswith(opening)


def test_unrecognised_speech_says_sorry(storyteller, tmp_path):
    request = espeak_wav(tmp_path, "purple elephants dance on the ceiling at midnight")
    out = tmp_path / "sorry.wav"
    r = run(storyteller, base_args(tmp_path, "--mic-wav", str(request), "--wav", str(out)))
    assert r.returncode == 2, r.stderr
    assert "Sorry, say it again" in r.stderr
    seconds, rms = wav_stats(out)
    assert 0.5 < seconds < 4 and rms > 500, "the apology is spoken"


def test_prompts_from_stdin(storyteller, tmp_path):
    wav = tmp_path / "s.wav"
    r = run(
        storyteller,
        base_args(tmp_path, "--wav", str(wav), "--steps", "40"),
        input="The little dragon\nTim had a red ball\nstop\nnever read\n",
    )
    assert r.returncode == 0, r.stderr
    assert "storyteller: ready" in r.stderr
    assert r.stdout.count("\n") >= 2 and "The little dragon" in r.stdout
    assert "never read" not in r.stdout
    assert r.stderr.count("generation:") == 2
    # one WAV per story, numbered, none overwritten (issue 13)
    assert not wav.exists() and sorted(p.name for p in tmp_path.glob("s*.wav")) == [
        "s-1.wav",
        "s-2.wav",
    ]
    for n in (1, 2):
        assert f"storyteller: wrote {tmp_path / f's-{n}.wav'}" in r.stderr
        assert wav_stats(tmp_path / f"s-{n}.wav")[1] > 500


@pytest.mark.parametrize(
    "steps, seed, ending",
    [(30, 1, "finished"), (30, 3, "finished"), (30, 5, "finished"), (512, 5, "dropped")],
)
def test_the_story_ends_with_a_whole_sentence(
    storyteller, host_engine, tmp_path, steps, seed, ending
):
    """At the step budget run.c's llama2 stops mid-word; the storyteller says the same
    story on to the end of its sentence (at most 48 more tokens), or, when the model's
    context ends first (stories260K: 512), drops the unfinished sentence."""
    wav = tmp_path / "s.wav"
    args = ["--prompt", "Once upon a time", "--steps", str(steps), "--seed", str(seed)]
    r = run(storyteller, base_args(tmp_path, *args, "--wav", str(wav)))
    assert r.returncode == 0, r.stderr
    cut = run(
        host_engine,
        [str(MODEL), "-z", str(TOK), "-n", str(steps), "-s", str(seed), "-t", "1.0", "-p", "0.9"]
        + ["-i", "Once upon a time"],
    ).stdout.strip()
    story = r.stdout.strip()
    assert not re.search(r"[.!?][\"']?$", cut), "this seed's story must stop mid-sentence"
    finished = re.search(r"finished the last sentence in (\d+) more tokens", r.stderr)
    assert bool(finished) == (ending == "finished"), r.stderr
    if finished:
        assert 1 <= int(finished[1]) <= 48
        assert story.startswith(cut) and len(story) > len(cut)
        assert re.search(r"[.!?][\"']?$", story), story[-40:]
    else:
        assert "dropped the unfinished last sentence" in r.stderr
        assert story == cut  # printed as far as the context; its last sentence unspoken
    spoken = int(re.search(r"\((\d+) sentences\)", r.stderr)[1])
    assert spoken == len(re.findall(r"[.!?][\"']?(\s|$)", story)), (spoken, story)


@pytest.mark.parametrize(
    "overrides,args,message",
    [
        ({"model": "/nonexistent/model.bin"}, [], "/nonexistent/model.bin"),
        (
            {"tokenizer": str(MODELS / "tokenizer.bin")},
            [],
            "wrong tokenizer for this model (pass the right one with --tokenizer)",
        ),
        ({"voice": "klingon-xx"}, [], "no voice 'klingon-xx'"),
        ({}, ["--device", "hw:99,0"], "audio device 'hw:99,0'"),
        ({}, ["--speed", "fast"], "--speed"),
        ({}, ["--colour", "red"], "unknown setting 'colour'"),
        ({}, ["--mic-wav", "/nonexistent.wav"], "/nonexistent.wav"),
        ({"asr_dict": "/nonexistent.dict"}, ["--mic-wav", str(MODEL)], "not a RIFF/WAVE"),
    ],
)
def test_bad_input_is_a_clear_error(storyteller, tmp_path, overrides, args, message):
    cfg = write_config(tmp_path, **overrides)
    output = [] if "--device" in args else ["--wav", str(tmp_path / "x.wav")]
    request = [] if "--mic-wav" in args else ["--prompt", "Hi"]
    r = run(storyteller, ["--config", str(cfg), *request, *output, *args])
    assert r.returncode == 1, r.stderr
    assert message in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("storyteller: ")


def test_broken_config_line_names_file_and_line(storyteller, tmp_path):
    cfg = tmp_path / "broken.conf"
    cfg.write_text(f"model = {MODEL}\n# fine\nthis line has no equals sign\n")
    r = run(storyteller, ["--config", str(cfg), "--prompt", "Hi"])
    assert r.returncode == 1
    assert f"{cfg}:3" in r.stderr


def test_missing_model_is_spoken(storyteller, tmp_path):
    wav = tmp_path / "err.wav"
    cfg = write_config(tmp_path, model="/nonexistent/model.bin")
    r = run(storyteller, ["--config", str(cfg), "--prompt", "Hi", "--wav", str(wav)])
    assert r.returncode == 1
    assert wav_stats(wav)[1] > 500, "the error is spoken where audio works"


def test_riscv64_build_speaks_under_qemu(rv64gcv_engine, storyteller, tmp_path, capsys):
    """The RVV 1.0 build, static with the payload's own espeak-ng, pocketsphinx and alsa
    (duo_builder.build.payload_libs), run by qemu-riscv64 without a sysroot, reading the
    payload's voice and acoustic model: the same spoken round trip as on the host."""
    from duo_builder.build import engine, payload_libs

    data = payload_libs.ensure().data
    binary = engine.binary("rv64gcv", "storyteller")
    runner = engine.runner("rv64gcv", "storyteller")
    request = espeak_wav(tmp_path, "tell me a story about a dragon")
    wav = tmp_path / "rv.wav"
    args = base_args(tmp_path, "--mic-wav", str(request), "--wav", str(wav))
    args += ["--espeak_data", str(data / payload_libs.ESPEAK_DATA.lstrip("/"))]
    args += ["--asr_model", str(data / payload_libs.ASR_MODEL.lstrip("/"))]
    r = run(binary, args, runner)
    assert 'heard "tell me a story about a dragon"' in r.stderr, r.stderr
    text = assert_spoken_story(r, wav, capsys)
    assert text.startswith("Once upon a time, there was a little dragon")


def test_dictionary_matches_the_grammar(storyteller):
    """story.dict holds exactly the grammar's words (regenerated from prompts.c + cmudict)."""
    import sys

    tool = ENGINE_SRC / "storyteller" / "make_dict.py"
    r = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_led_shows_thinking_speaking_idle_in_a_fake_sysfs(storyteller, tmp_path):
    """led = led-user under STORYTELLER_SYSFS: its trigger is a FIFO, so every state the
    storyteller writes is seen in order (a real LED keeps only the last)."""
    import os
    import threading

    led = tmp_path / "sys/class/leds/led-user"
    led.mkdir(parents=True)
    (led / "brightness").write_text("0")
    (led / "max_brightness").write_text("1\n")
    os.mkfifo(led / "trigger")
    writes: list[str] = []

    def read_all() -> None:
        # writes that land between two opens arrive together ("nonenone"): split them
        while True:
            with open(led / "trigger") as f:
                text = f.read()
            writes.extend(re.findall(r"none|timer|heartbeat|default-on", text))
            if text.endswith("END"):
                return

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        wav = tmp_path / "s.wav"
        args = ["--prompt", "Once upon a time", "--steps", "40", "--led", "led-user"]
        env = {**os.environ, "STORYTELLER_SYSFS": str(tmp_path / "sys")}
        r = run(storyteller, base_args(tmp_path, *args, "--wav", str(wav)), env=env)
    finally:
        with open(led / "trigger", "w") as f:
            f.write("END")
        reader.join(timeout=10)
    assert r.returncode == 0, r.stderr
    states = [w for i, w in enumerate(writes) if i == 0 or w != writes[i - 1]]
    assert states == ["timer", "heartbeat", "none"], writes
    assert (led / "brightness").read_text() == "0"  # off when done


def test_missing_led_is_one_line_and_the_story_goes_on(storyteller, tmp_path):
    import os

    wav = tmp_path / "s.wav"
    env = {**os.environ, "STORYTELLER_SYSFS": str(tmp_path)}
    args = ["--prompt", "Once upon a time", "--steps", "30", "--led", "led-user"]
    r = run(storyteller, base_args(tmp_path, *args, "--wav", str(wav)), env=env)
    assert r.returncode == 0, r.stderr
    line = f"storyteller: LED 'led-user': {tmp_path}/class/leds/led-user/brightness and trigger"
    assert line in r.stderr and "going on without the LED" in r.stderr
    assert wav.stat().st_size > 10000
    bad = run(storyteller, base_args(tmp_path, "--listen-sound", "loud"))
    assert bad.returncode == 1 and "listen_sound must be on or off, got 'loud'" in bad.stderr


def _chime(rate: int = 22050) -> np.ndarray:
    """feedback_chime()'s two notes, computed here from its description."""
    per, gap = int(rate * 0.09), int(rate * 0.02)
    fade = per // 6
    i = np.arange(per)
    env = np.minimum(1.0, np.minimum(i / fade, (per - i) / fade))
    notes = [np.rint(9000 * env * np.sin(2 * np.pi * f * i / rate)) for f in (880.0, 1318.5)]
    return np.concatenate([notes[0], np.zeros(gap), notes[1]])


@pytest.mark.parametrize("sound", ["on", "off"])
def test_mic_loop_chimes_when_it_starts_listening(storyteller, tmp_path, sound):
    """--mic for real through ALSA: the microphone is the `file` plugin reading a spoken
    request, the speaker another writing what is played (each open starts the file anew:
    after the story, the loop listens again, so the last thing played is the chime)."""
    req = tmp_path / "req.raw"
    subprocess.run(
        ["sox", espeak_wav(tmp_path, "tell me a story about a dragon"), "-r", "16000", "-c", "1"]
        + ["-b", "16", "-e", "signed", "-t", "raw", req, "pad", "0.5", "2"],
        check=True,
    )
    played = tmp_path / "played.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f'pcm.story {{ type file slave {{ pcm {{ type null }} }} file "{played}" format "raw" }}\n'
        f'pcm.mic {{ type file slave {{ pcm {{ type null }} }} file "/dev/null" infile "{req}" '
        'format "raw" }\n'
    )
    args = ["--mic", "--device", "story", "--mic-device", "mic", "--listen-sound", sound]
    r = run(
        storyteller,
        base_args(tmp_path, *args),
        input="\n",  # Enter: speak; then end of input
        env={"ALSA_CONFIG_PATH": str(conf), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert 'heard "tell me a story about a dragon"' in r.stderr and "dragon" in r.stdout
    pcm = np.frombuffer(played.read_bytes(), dtype="<i2").astype(np.float64)
    want = _chime()
    if sound == "on":
        assert len(pcm) == len(want) and np.max(np.abs(pcm - want)) <= 1
    else:
        assert len(pcm) > 5 * len(want)  # the story's speech, no chime after it

"""Issue 14's defects D1-D3, each with its reproducer: one clean line and exit 1 from the
ASan + UBSan builds, never a sanitizer report, a NaN story or a 4 GB allocation.

D1: a NaN (or infinite) scale, norm or weight in a model file is refused at load, naming
the file and the tensor. D2: `nan`/`inf` and non-integers in the storyteller's config.
D3: a WAV whose data chunk claims more than the file holds."""

import shutil
import struct
from pathlib import Path

import pytest

from duo_builder.build import engine
from duo_builder.build.fuzz import REGRESSIONS
from duo_builder.model.convert import convert
from duo_builder.paths import ENGINE_SRC, MODELS
from engine_runner import run

MODEL = MODELS / "stories260K.bin"
TOK = MODELS / "tok512.bin"
DICT = ENGINE_SRC / "storyteller" / "story.dict"
NAN_F32 = struct.pack("<f", float("nan"))
INF_F32 = struct.pack("<f", float("inf"))
NAN_BF16 = b"\xc0\x7f"
# packed sections (engine/FORMAT.md): table at 128, 24-byte entries: kind, layer, offset, bytes
KIND = {"norms": 1, "wq": 3, "w2": 8, "classifier": 10, "classifier_q8": 11}
BLOCK_SCALES = {"q8": 16 * 32, "q4": 16 * 16}  # where a block's bf16 scales start


def assert_one_line(r, prog: str, *mentions: str | Path) -> str:
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith(f"{prog}: ")]
    assert len(lines) == 1, r.stderr
    assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr
    for m in mentions:
        assert str(m) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    return {
        f: convert(MODEL, d / f"s260-{f}.bin", f)
        for f in ("v1", "q80", "fp32", "q8", "q4", "faithful")
    }


def section(data: bytes, kind: int, layer: int = 0) -> int:
    """Offset of a packed file's section."""
    n = struct.unpack_from("<i", data, 56)[0]
    for i in range(n):
        k, lay, off, _ = struct.unpack_from("<iiQQ", data, 128 + 24 * i)
        if k == kind and lay == layer:
            return off
    raise AssertionError(f"no section of kind {kind}, layer {layer}")


def poked(tmp_path: Path, src: Path, name: str, offset: int, value: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + len(value)] = value
    dst = tmp_path / name
    dst.write_bytes(bytes(data))
    return dst


def llama2c_layout(data: bytes) -> tuple[int, int, int, int]:
    """(header bytes, dim, n_layers, vocab) of a v1/v2 file."""
    dim, _, layers, _, _, vocab, _ = struct.unpack_from("<7i", data, 8)
    return 256, dim, layers, vocab


def nan_cases(formats: dict[str, Path]) -> list[tuple[str, Path, int, bytes, str]]:
    """(case, file, offset, bytes, the tensor the error must name)."""
    cases = []
    v1 = formats["v1"].read_bytes()
    head, dim, layers, vocab = llama2c_layout(v1)
    norms = (2 * layers + 1) * dim * 4
    cases.append(("v1-rms_att", formats["v1"], head, NAN_F32, "rms_att of layer 0"))
    cases.append(("v1-embedding", formats["v1"], head + norms + 40, INF_F32, "embedding"))
    q80 = formats["q80"].read_bytes()
    gs = struct.unpack_from("<i", q80, 8 + 29)[0]
    assert gs > 0
    scales = head + norms + vocab * dim  # the embedding's scales follow its int8 values
    cases.append(("q80-scale", formats["q80"], scales + 4 * 3, NAN_F32, "embedding"))
    wq = head + norms + vocab * dim + vocab * dim // gs * 4  # layer 0's wq
    cases.append(("q80-wq-scale", formats["q80"], wq + dim * dim, NAN_F32, "wq of layer 0"))
    for fmt in ("q8", "q4"):
        data = formats[fmt].read_bytes()
        off = section(data, KIND["wq"]) + BLOCK_SCALES[fmt]
        cases.append((f"{fmt}-scale", formats[fmt], off, NAN_BF16, "wq of layer 0"))
        off = section(data, KIND["w2"], 1) + BLOCK_SCALES[fmt] + 2 * 5
        cases.append((f"{fmt}-w2-scale", formats[fmt], off, b"\x80\x7f", "w2 of layer 1"))
        cases.append(
            (f"{fmt}-norm", formats[fmt], section(data, KIND["norms"]) + 8, NAN_F32, "norms")
        )
    fp32 = formats["fp32"].read_bytes()
    cases.append(("fp32-wq", formats["fp32"], section(fp32, KIND["wq"]) + 64, NAN_F32, "wq"))
    faithful = formats["faithful"].read_bytes()
    off = section(faithful, KIND["classifier_q8"]) + BLOCK_SCALES["q8"]
    cases.append(("faithful-classifier_q8", formats["faithful"], off, NAN_BF16, "classifier_q8"))
    cases.append(("faithful-wq", formats["faithful"], section(faithful, KIND["wq"]), NAN_F32, "wq"))
    # the fp32 classifier faithful.c reads with pread: a NaN there told a story of <unk>
    off = section(faithful, KIND["classifier"]) + 4 * 1000
    cases.append(("faithful-classifier", formats["faithful"], off, NAN_F32, "classifier: value"))
    return cases


def test_nan_in_model_is_refused_naming_file_and_tensor(asan_engine, tmp_path, formats):
    """D1: the release build used to print a story and exit 0; ASan+UBSan saw NaN -> int8."""
    for case, src, offset, value, tensor in nan_cases(formats):
        bad = poked(tmp_path, src, f"{case}.bin", offset, value)
        r = run(asan_engine, [str(bad), "-z", str(TOK), "-n", "8", "-s", "1"])
        line = assert_one_line(r, "llama2", bad, f"tensor {tensor}")
        assert "finite" in line and r.stdout == b"", (case, line)


def test_huge_finite_scales_are_no_undefined_behaviour(asan_engine, tmp_path, formats):
    """Finite extremes pass the load check (they are numbers) but overflow the activations
    to inf and NaN: the int8/int16 quantizers must convert nothing undefined."""
    for fmt in ("q8", "faithful"):
        data = bytearray(formats[fmt].read_bytes())
        kind = KIND["wq"] if fmt == "q8" else KIND["norms"]
        start = section(bytes(data), kind)
        if fmt == "q8":  # every scale of layer 0's wq: bf16 3.4e38
            for b in range(0, 544 * 4, 544):
                data[start + 512 + b : start + 544 + b] = b"\x7f\x7f" * 16
        else:  # the first norm: 3e38 (fp32 layers on the faithful path)
            data[start : start + 4] = struct.pack("<f", 3e38)
        bad = tmp_path / f"huge-{fmt}.bin"
        bad.write_bytes(bytes(data))
        r = run(asan_engine, [str(bad), "-z", str(TOK), "-n", "16", "-s", "1"])
        assert r.returncode in (0, 1), r.stderr  # 86/87: a sanitizer report
        assert "runtime error" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def asan_storyteller(asan_engine) -> Path:
    return engine.binary("asan", "storyteller")


def good_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "good.conf"
    cfg.write_text(f"model = {MODEL}\ntokenizer = {TOK}\nasr_dict = {DICT}\nseed = 3\n")
    return cfg


CONFIGS = sorted((REGRESSIONS / "config").glob("*.conf"))


@pytest.mark.parametrize("fixture", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_nan_in_config_is_one_line(asan_storyteller, tmp_path, fixture):
    """D2: `temperature = nan` told a story of <unk>; `seed = nan` and the integer keys were
    undefined behaviour (a NaN converted to an integer)."""
    key = fixture.stem.split("-")[0]
    cfg = tmp_path / fixture.name
    shutil.copyfile(fixture, cfg)
    r = run(
        asan_storyteller, ["--config", str(cfg), "--prompt", "Hi", "--wav", str(tmp_path / "x.wav")]
    )
    assert_one_line(r, "storyteller", f"{cfg}:2", key)


@pytest.mark.parametrize("value", ["nan", "inf", "7.5"])
def test_nan_on_the_command_line_is_one_line(asan_storyteller, tmp_path, value):
    r = run(
        asan_storyteller,
        ["--config", str(good_config(tmp_path)), "--prompt", "Hi", "--steps", value],
    )
    assert_one_line(r, "storyteller", "--steps", "steps")


def test_huge_wav_chunk_is_one_line(asan_storyteller, tmp_path):
    """D3: a 52-byte WAV whose data chunk claims 4 GB made the reader ask malloc for it;
    now it reads the 4 samples there are (too short a request: nothing heard)."""
    wav = REGRESSIONS / "wav" / "huge-data-chunk.wav"
    assert wav.stat().st_size == 52
    args = ["--config", str(good_config(tmp_path)), "--mic-wav", str(wav)]
    r = run(asan_storyteller, [*args, "--wav", str(tmp_path / "x.wav")], timeout=120)
    # exit 2: the storyteller's "not a story request" (PocketSphinx heard nothing in 4 samples)
    assert r.returncode == 2 and 'heard ""' in r.stderr, r.stderr
    assert "Sanitizer" not in r.stderr and "out of memory" not in r.stderr, r.stderr


def test_truncated_wav_header_is_one_line(asan_storyteller, tmp_path):
    wav = tmp_path / "cut.wav"
    wav.write_bytes((REGRESSIONS / "wav" / "huge-data-chunk.wav").read_bytes()[:40])
    args = ["--config", str(good_config(tmp_path)), "--mic-wav", str(wav)]
    r = run(asan_storyteller, [*args, "--wav", str(tmp_path / "x.wav")])
    assert_one_line(r, "storyteller", wav, "truncated or malformed WAV")


@pytest.mark.parametrize("args", [["-t", "nan"], ["-p", "nan"], ["-t", "-nan"]])
def test_nan_option_of_llama2_is_one_line(asan_engine, args):
    """D2's twin in llama2's command line: `-t nan` told a story of <unk>."""
    r = run(asan_engine, [str(MODEL), "-z", str(TOK), "-n", "8", *args])
    assert_one_line(r, "llama2", f"option {args[0]} expects a number")
    assert r.stdout == b""

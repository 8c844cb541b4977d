"""`invoke bench --storage`'s result file and its parsing (no guest here: the measurement
in the real QEMU guest is tests/test_qemu_image.py's test_storage_reads_are_measured)."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from duo_builder.bench import storage
from duo_builder.bench.storage import Run, StorageBenchError, StorageReads
from duo_builder.paths import REPO

GUEST_OUTPUT = """DISK_BEFORE 7 26
MEM_BEFORE MemTotal: 56212 kB
MEM_BEFORE MemAvailable: 46968 kB
DISK_AFTER 2607 176666
MEM_MIN 42232
SECONDS 360.31 416.10
STORY ca13089c3c3a3d3b2cf530cf9a305ce86fd30299ed840725eab1afe5c7c46490
faithful: steps 60, by bounds alone 0.3833, tiles per step 49.22, bytes per token 34730026
TIME 338 36296
"""


def a_run(steps: int, sectors: int, reads: int, faults: int) -> Run:
    return replace(storage.parse(64, GUEST_OUTPUT), steps=steps, disk_sectors=sectors,
                   disk_reads=reads, major_faults=faults)  # fmt: skip


def test_guest_output_parses():
    r = storage.parse(64, GUEST_OUTPUT)
    assert (r.disk_reads, r.disk_sectors) == (2600, 176640)
    assert (r.major_faults, r.peak_rss_kb) == (338, 36296)
    assert (r.mem_total_kb, r.mem_available_before_kb, r.mem_available_min_kb) == (
        56212,
        46968,
        42232,
    )
    assert r.seconds == pytest.approx(55.79)
    assert r.stats.startswith("faithful: steps 60")


def test_guest_failures_are_one_line_errors():
    with pytest.raises(StorageBenchError, match=r"exited with 1 at -n 64: .*no such file"):
        storage.parse(64, "DISK_BEFORE 1 2\nEXIT 1\nllama2: model.bin: no such file\n")
    with pytest.raises(StorageBenchError, match=r"-n 192 in the guest: no .*TIME"):
        storage.parse(192, GUEST_OUTPUT.replace("TIME 338 36296\n", ""))


def test_per_token_is_the_difference_over_the_positions_between():
    reads = storage.per_token([a_run(64, 1000, 100, 10), a_run(192, 1256, 228, 74)], "here")
    assert reads == StorageReads(256 * 512 / 128, 0.5, 1.0, 55, "here")
    two = [a_run(64, 1000, 100, 10), a_run(192, 1256, 228, 74)] * 2
    two[2] = a_run(64, 1256, 100, 74)  # a second pair with a heavier start-up: 0 sectors more
    assert storage.per_token(two, "here").read_bytes_per_token == 128 * 512 / 128
    noisy = storage.per_token([a_run(64, 1000, 100, 10), a_run(192, 1256, 228, 9)], "here")
    assert noisy.major_faults_per_token == 0.0
    with pytest.raises(StorageBenchError, match="need a longer one"):
        storage.per_token([a_run(64, 1, 1, 1), a_run(64, 1, 1, 1)], "here")
    with pytest.raises(StorageBenchError, match="need pairs"):
        storage.per_token([a_run(64, 1, 1, 1)], "here")


def test_long_run_counted_from_where_the_short_one_ended():
    """The long run's own samples, at the short run's duration: its start-up (whatever
    the kernel evicted while the model loaded) cancels out."""
    short = replace(a_run(64, 9000, 900, 90), seconds=50.0)
    samples = ((10.0, 100, 1000, 10), (40.0, 400, 4000, 40), (60.0, 600, 6000, 60))
    long = replace(a_run(192, 13000, 1300, 130), seconds=150.0, samples=samples)
    assert long.at(50.0) == (500.0, 5000.0, 50.0)  # between the samples at 40 and 60 s
    assert long.at(500.0) == (1300.0, 13000.0, 130.0)  # past its end: its totals
    reads = storage.per_token([short, long], "here")
    assert reads.read_bytes_per_token == (13000 - 5000) * 512 / 128
    assert (reads.reads_per_token, reads.major_faults_per_token) == (800 / 128, 80 / 128)
    out = GUEST_OUTPUT.replace(
        "DISK_AFTER", "SAMPLE 361.31 5 40 3\nSAMPLE 362.31 9 80 7\nDISK_AFTER"
    )
    assert storage.parse(64, out).samples == ((1.0, 5, 40, 3), (2.0, 9, 80, 7))


def test_result_file_round_trip(tmp_path):
    path = tmp_path / "storage.json"
    assert storage.load_measured("faithful", path) is None  # not measured yet
    runs = [a_run(64, 1000, 100, 10), a_run(192, 1256, 228, 74)]
    reads = storage.per_token(runs, "a test")
    storage.write(path, "faithful", reads, runs)
    storage.write(path, "other", replace(reads, source="another"), runs)
    assert storage.load_measured("faithful", path) == reads
    assert storage.load_measured("other", path).source == "another"
    assert storage.load_measured("q8", path) is None
    assert json.loads(path.read_text())["models"]["faithful"]["runs"][1]["steps"] == 192
    assert [p.name for p in tmp_path.iterdir()] == ["storage.json"]  # no temporary left


@pytest.mark.parametrize(
    "text, what",
    [
        ("{not json", "not a storage measurement"),
        ('{"version": 99, "models": {}}', "not a version-1 storage measurement"),
        ('{"version": 1, "models": {"faithful": {"per_token": {}}}}', "no complete per-token"),
    ],
)
def test_damaged_result_file_is_a_one_line_error(tmp_path, text, what):
    path = tmp_path / "storage.json"
    path.write_text(text)
    with pytest.raises(StorageBenchError, match=what) as e:
        storage.load_measured("faithful", path)
    assert "\n" not in str(e.value) and "invoke bench --storage" in str(e.value)


def test_missing_guest_image_names_the_command(tmp_path):
    with pytest.raises(StorageBenchError) as e:
        storage.guest_files(tmp_path)  # an out/ with no image in it
    assert "\n" not in str(e.value) and "invoke image --recipe qemu-virt-64m" in str(e.value)


def test_bench_storage_is_on_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "--storage" in done.stdout

"""The project's own promises: README's set-up commands, CI running exactly the README's
test command, ruff-clean Python, the C engine's own tests (under ASan + UBSan too)."""

import subprocess
import sys

import pytest

from duo_builder.build import engine
from duo_builder.paths import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_image_and_test_commands():
    main, test = readme_commands()
    assert main.endswith("invoke image --recipe qemu-virt-64m")
    assert test.endswith("invoke test")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in [line.strip() for line in ci]


def test_python_is_ruff_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        p = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True
        )
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("program", ["test_engine", "test_faithful"])
def test_c_unit_tests_under_sanitizers(asan_engine, program):
    p = subprocess.run([str(engine.binary("asan", program))], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith(" 0 failed")


def test_engine_build_failure_is_reported(tmp_path):
    bad = engine.Target("bad", cc="definitely-not-a-compiler")
    engine.TARGETS["bad"] = bad
    try:
        engine.build("bad")
    except engine.EngineError as e:
        assert "definitely-not-a-compiler" in str(e)
    else:
        raise AssertionError("a missing compiler must raise EngineError")
    finally:
        del engine.TARGETS["bad"]

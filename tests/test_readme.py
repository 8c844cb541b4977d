"""Every command in README.md's code blocks, run as written (or, for the few listed in
NOT_RUN with the reason, checked without running: the task and its options through
invoke's own parser, the program's options against its --help), so an example cannot
break silently. A new command the test does not know fails it until it is classified."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The commands that are checked, not run, each with the reason.
NOT_RUN = {
    "python3 -m pip install -q -r requirements.txt": "the network (CI runs it first anyway)",
    "python3 -m invoke image --recipe qemu-virt-64m": "a ~6 min image build "
    "(tests/test_qemu_image.py builds and boots that image)",
    "python3 -m invoke test": "this very test suite",
    "build/host/storyteller --mic": "a microphone and a push-to-talk button",
}
# What a command run here gets on stdin (the typed-prompt loop).
STDIN = {"build/host/storyteller --wav story.wav": "Once upon a time\nstop\n"}


def commands() -> list[str]:
    """The command lines of README.md's sh code blocks: comments stripped, `&&` split."""
    blocks = re.findall(r"^```(?:sh|bash|console)\n(.*?)^```", README.read_text(), re.M | re.S)
    found = []
    for block in blocks:
        # a backslash continues a line; so does an indented "[" (a synopsis's options)
        block = re.sub(r"\\\n|\n\s+(?=\[)", " ", block)
        for line in block.splitlines():
            part: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word != "&&":
                    part.append(word)
                elif part:
                    found.append(shlex.join(part))
                    part = []
    return found


def test_the_readme_has_the_commands_this_test_knows():
    cmds = commands()
    assert "build/host/storyteller --prompt 'Once upon a time' --wav story.wav" in cmds
    assert len(cmds) >= 8
    for cmd in NOT_RUN:
        assert cmd in cmds, f"NOT_RUN lists {cmd!r}, which README.md no longer shows"


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty directory whose build/ is the repository's: the commands run as written
    and leave their files here, not in the checkout."""
    (tmp_path / "build").symlink_to(ROOT / "build")
    (tmp_path / "models").symlink_to(ROOT / "models")
    conf = tmp_path / "asound.conf"  # ALSA's default device: a file, no sound card needed
    played = tmp_path / "played.raw"
    conf.write_text(
        f'pcm.!default {{ type file slave {{ pcm {{ type null }} }} file "{played}" '
        'format "raw" }\n'
    )
    return tmp_path


def _check_invoke(words: list[str]) -> None:
    """The task exists and takes these options with these values (invoke's parser)."""
    from invoke import Collection
    from invoke.parser import Parser, ParserContext

    sys.path.insert(0, str(ROOT))
    try:
        import tasks
    finally:
        sys.path.remove(str(ROOT))
    coll = Collection.from_module(tasks)
    contexts = [ParserContext(name=n, args=coll[n].get_arguments()) for n in coll.task_names]
    parsed = Parser(contexts=contexts).parse_argv(words)
    assert parsed and parsed[0].name == words[0]


def _check_program(words: list[str], workdir: Path) -> None:
    """Each option of the command appears in the program's --help."""
    helptext = subprocess.run(
        [words[0], "--help"], cwd=workdir, capture_output=True, text=True, timeout=60
    ).stdout
    for w in words[1:]:
        if w.startswith("-"):
            assert re.search(rf"(^|\s){re.escape(w)}(\s|$)", helptext), f"{w} not in --help"


def _run(cmd: str, words: list[str], workdir: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "ALSA_CONFIG_PATH": str(workdir / "asound.conf"),
    }
    return subprocess.run(
        words,
        cwd=workdir,
        env=env,
        input=STDIN.get(cmd, ""),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_readme_command_runs(storyteller, host_engine, workdir):
    ran, checked = [], []
    for cmd in commands():
        words = shlex.split(cmd)
        if "[" in cmd:  # a synopsis: every flag in llama2's usage, and one filled in
            usage = subprocess.run([ROOT / words[0]], capture_output=True, text=True).stderr
            for flag in re.findall(r"\[(-\w)\b", cmd):
                assert f"  {flag} <" in usage, f"README synopsis flag {flag} not in usage"
            filled = [words[0], "models/stories260K.bin", "-z", "models/tok512.bin", "-n", "40"]
            r = _run(cmd, filled, workdir)
            assert r.returncode == 0 and r.stdout.strip(), r.stderr
            checked.append(cmd)
            continue
        if cmd in NOT_RUN:
            if words[:3] == ["python3", "-m", "invoke"]:
                _check_invoke(words[3:])
            elif words[0].startswith("build/"):
                _check_program(words, workdir)
            else:
                assert (ROOT / words[-1]).exists()  # pip's requirements file
            checked.append(cmd)
            continue
        assert words[0].startswith("build/host/") or words[0] == "espeak-ng", (
            f"README command not classified: {cmd!r} (run it here, or add it to NOT_RUN "
            "with the reason)"
        )
        r = _run(cmd, words, workdir)
        assert r.returncode == 0, f"{cmd}: exit {r.returncode}: {r.stderr[-500:]}"
        assert "Traceback" not in r.stderr
        ran.append(cmd)
    assert (workdir / "story.wav").stat().st_size > 10000  # --prompt ... --wav story.wav
    assert (workdir / "story-1.wav").stat().st_size > 10000  # the loop: one file per story
    assert (workdir / "played.raw").stat().st_size > 10000  # ALSA's default device
    assert (workdir / "answer.wav").stat().st_size > 10000  # the spoken request's story
    assert len(ran) >= 5 and set(checked) - set(NOT_RUN), (ran, checked)  # + the synopsis


def test_a_missing_model_says_where_it_looked(storyteller, tmp_path):
    """A binary away from the build tree and the board: one line listing every place."""
    lone = tmp_path / "storyteller"
    lone.write_bytes(storyteller.read_bytes())
    lone.chmod(0o755)
    r = subprocess.run(
        [lone, "--prompt", "hi", "--wav", tmp_path / "x.wav"], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"storyteller: no model: looked for /usr/share/storyteller/model.bin, "
        f"{tmp_path}/model.bin, {tmp_path}/../../models/stories260K.bin; give --model FILE "
        "or set model = FILE in /etc/storyteller.conf"
    )

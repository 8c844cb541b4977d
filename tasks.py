"""Tasks: a thin command line over the duo_builder package (`invoke --list`).

Every task runs through `task` below: a BuildError (the one base of the errors a user can
fix, duo_builder/errors.py) ends the task as one line, `error: ...`; anything else is a
bug and keeps its traceback."""

import functools
import sys
from collections.abc import Callable
from typing import Any

import invoke
from invoke import Context, Exit

from duo_builder import paths
from duo_builder.build import engine as eng
from duo_builder.errors import BuildError


def _fail(err: Exception) -> Exit:
    return Exit(f"error: {err}", code=1)


class _CheckedArgument(invoke.parser.Argument):
    """An option whose bad value (`--steps abc`) is a one-line parse error, not a traceback."""

    def set_value(self, value: Any, cast: bool = True) -> None:
        try:
            super().set_value(value, cast)
        except ValueError:
            kind = getattr(self.kind, "__name__", "value")
            expected = {"int": "a whole number", "float": "a number"}.get(kind, f"a {kind}")
            raise invoke.exceptions.ParseError(
                f"error: --{self.name.replace('_', '-')}: expected {expected}, got {value!r}"
            ) from None


class _Task(invoke.Task):
    """Never `-h` as an option's short flag: `invoke TASK -h` must ask for help, not turn
    on whichever option starts with h (it once started a 30-run benchmark)."""

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        return super().arg_opts(name, default, taken_names | {"h"})

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Any]:
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            arg.__class__ = _CheckedArgument
        return args


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke's @task, with BuildError caught once for every task, bad option values as
    one-line errors and no option behind `-h`."""

    def decorate(body: Callable[..., Any]) -> Any:
        @functools.wraps(body)
        def caught(*a: Any, **kw: Any) -> Any:
            if any(v in ("-h", "--help") for v in (*a[1:], *kw.values())):
                # a required value swallowed the help flag (`invoke deploy -h`): no work
                name = body.__name__
                raise Exit(f"error: {name}: no value given; help: invoke --help {name}", code=1)
            try:
                return body(*a, **kw)
            except BuildError as e:
                raise _fail(e) from None

        return invoke.task(caught, klass=_Task, **kwargs)

    if len(args) == 1 and callable(args[0]) and not kwargs:  # bare @task
        return decorate(args[0])
    return decorate


@task(
    help={
        "target": f"one of: {', '.join(eng.TARGETS)} (riscv64 ones: gcc 15 in a Debian sid "
        "chroot, made once under build/toolchains/)",
        "check": "also run the C tests (riscv64 ones under QEMU)",
    }
)
def engine(c: Context, target: str = "host", check: bool = False) -> None:
    """Build the llama2 engine into build/<target>/llama2 (host, asan, rv64gc, rv64gcv, c906)."""
    print(eng.build(target, check=check))


@task(
    help={
        "prompt": "the story's opening",
        "steps": "tokens to generate (0 = the model's context length)",
        "seed": "random seed (0 = from the clock)",
        "temperature": "0 = greedy",
        "model": "checkpoint (default: the bundled stories260K)",
        "tokenizer": "tokenizer for the checkpoint (default: the bundled tok512)",
    }
)
def story(
    c: Context,
    prompt: str = "Once upon a time",
    steps: int = 256,
    seed: int = 0,
    temperature: float = 1.0,
    model: str = "",
    tokenizer: str = "",
) -> None:
    """Build the engine and tell a story with the bundled default model."""
    binary = eng.build("host")
    model = model or str(paths.DEFAULT_MODEL)
    tokenizer = tokenizer or str(paths.DEFAULT_TOKENIZER)
    args = [
        str(binary),
        model,
        "-z",
        tokenizer,
        "-n",
        str(steps),
        "-s",
        str(seed),
        "-t",
        str(temperature),
        "-i",
        prompt,
    ]
    result = c.run(" ".join(_quote(a) for a in args), warn=True, pty=sys.stdout.isatty())
    if not result.ok:
        raise Exit(code=result.exited)


@task(
    help={
        "src": "fp32 checkpoint (v0/v1)",
        "dst": "output file",
        "format": "q8, q4, fp32 or faithful (the engine's packed format, engine/FORMAT.md; "
        "faithful: fp32 + an int8 classifier for -k faithful); q80 (llama2.c v2, runq.c's), "
        "v1 or v0",
    }
)
def convert(c: Context, src: str, dst: str, format: str = "q8") -> None:
    """Convert a checkpoint to another format (atomic: dst appears only when complete)."""
    from duo_builder.model.convert import convert as do_convert

    try:
        print(do_convert(src, dst, format))
    except (ValueError, OSError) as e:  # a bad format name, a missing or unreadable file
        raise _fail(e) from None


@task(
    help={
        "url": "where to download the model from",
        "sha256": "the file's expected sha256 (required)",
        "path": "a local file instead of a URL",
        "name": "file name in the cache (default: the URL's or file's)",
    }
)
def model(c: Context, sha256: str, url: str = "", path: str = "", name: str = "") -> None:
    """Fetch a model into the verified cache (resumable, sha256-checked); prints its path."""
    from pathlib import Path

    from duo_builder.model.download import fetch_model

    got = fetch_model(
        sha256=sha256, url=url or None, path=Path(path) if path else None, name=name or None
    )
    print(got)


@task(help={"k": "only tests matching this pytest -k expression"})
def test(c: Context, k: str = "") -> None:
    """Run the test suite (builds what it needs)."""
    selector = f" -k {_quote(k)}" if k else ""
    c.run(f"{sys.executable} -m pytest -q{selector}", pty=sys.stdout.isatty())


@task(
    help={
        "seconds": "how long each target runs (default 60)",
        "target": "all (default), model (the seven model formats) or a comma list of: "
        "model_v0, model_v1, model_q80, model_packed_f32, model_packed_q8, model_packed_q4, "
        "model_faithful, tokenizer, config, wav, recipe (the recipe loader, Hypothesis)",
    }
)
def fuzz(c: Context, seconds: int = 60, target: str = "all") -> None:
    """Fuzz the engine's file readers (libFuzzer + ASan/UBSan, engine/fuzz/): execs per
    target; exit 1 on a finding, its reproducer saved under build/fuzz/findings/."""
    from duo_builder.build import fuzz as fz

    if seconds < 1:
        raise _fail(ValueError(f"--seconds must be at least 1, got {seconds}"))
    fz.fuzz_all(fz.resolve(target), seconds, progress=sys.stderr.isatty())


@task(
    auto_shortflags=False,  # long options only: many share a first letter
    help={
        "runs": "runs per path (the contest uses 30)",
        "model": "fp32 checkpoint (default: synth15m, generated if needed; its Q8_0 "
        "conversion is made too)",
        "tokenizer": "its tokenizer (default: the bundled 32000-token one)",
        "riscv": "instead: modelled Milk-V Duo speed from instruction counts under QEMU "
        "(engine/CYCLE_MODEL.md)",
        "models": "with --riscv: more model files (PATH[,PATH...]), each on the engine's "
        "default path for its format",
        "target": "with --riscv: the riscv64 build to count (default rv64gcv, the proxy; "
        "c906 with --qemu)",
        "qemu": "with --riscv: PATH of a qemu-riscv64 that runs XTheadVector (-cpu c906fdv): "
        "counts the c906 build",
        "plugin": "with --qemu: the counting plugin .so built against that QEMU's "
        "qemu-plugin.h (default: engine/tools/qemu_insn_plugin.c, API 1)",
        "only": "with --riscv: some default configurations (K[,K...] of fp32-ref, fp32-fast, "
        "q80, pfp32-ref, pfp32, q8, q4, faithful)",
        "fidelity": "instead: each fast format's stories and next-token distributions "
        "against the fp32 reference (stories260K and synth15m, --seeds seeds)",
        "seeds": "with --fidelity: seeds per format (default 20)",
        "faithful": "instead: -k faithful against -k ref and -k fast on a faithful file "
        "(tok/s, RSS, story, the certified sampler's counters; --runs, default 30)",
        "board": "instead: [USER@]HOST: the contest protocol on a running board over SSH, for "
        "every model in its /usr/share/storyteller/ (out/bench-board-HOST.json)",
        "port": "with --board: its SSH port (default 22)",
        "password": "with --board: SSH password when no key is accepted (stock image: milkv)",
        "recipe": "with --board: the recipe deployed there (its fp32 model, when this host "
        "has it, gives run.c's reference story)",
        "asr": "instead: the storyteller's speech recognition on a labelled set of spoken "
        "requests, other speech and noise (espeak-ng voices, sox; about 90 s)",
        "storage": "instead: the faithful path's storage reads per token in the 64 MB QEMU "
        "guest (mem=60M, the Duo's ~55 MB; --model, default synth15m; minutes) into "
        "build/riscv-bench/storage.json, which --riscv prices at SD-card speed",
    },
)
def bench(
    c: Context,
    runs: int = 30,
    model: str = "",
    tokenizer: str = "",
    riscv: bool = False,
    models: str = "",
    target: str = "",
    qemu: str = "",
    plugin: str = "",
    only: str = "",
    fidelity: bool = False,
    seeds: int = 20,
    faithful: bool = False,
    board: str = "",
    port: int = 22,
    password: str = "",
    recipe: str = "duo-64m",
    asr: bool = False,
    storage: bool = False,
) -> None:
    """The contest protocol, for each compute path side by side: tok/s, RSS, story match.
    With --riscv: instructions/token under QEMU, bytes/token, RSS and a modelled Duo tok/s.
    With --asr: the storyteller's recognition on a labelled set of spoken requests, other
    speech and noise (requests understood, others refused, false stops; per voice)."""
    from duo_builder.bench import contest as b
    from duo_builder.bench import faithful as fb
    from duo_builder.bench import fidelity as fid
    from duo_builder.bench import riscv as rb

    if storage:
        from duo_builder.bench import storage as sb

        sb.main(model=model or None, tokenizer=tokenizer or None)
    elif asr:
        from duo_builder.bench import asr as asr_bench
        from duo_builder.build import engine as eng

        eng.build("host")
        asr_bench.main()
    elif board:
        from duo_builder.board import bench as bb
        from duo_builder.board.ssh import connect
        from duo_builder.image import recipe as rcp

        with connect(board, port, password) as b:
            result = bb.run(b, runs, rcp.load(recipe))
        print(bb.table(result))
        print(bb.write_json(result))
    elif fidelity:
        fid.main(seeds=seeds)
    elif faithful:
        fb.main(runs=runs, model=model or None, tokenizer=tokenizer or None)
    elif riscv:
        extra = [m for m in models.split(",") if m]
        keys = [k for k in only.split(",") if k]
        rb.main(extra, model or None, tokenizer or None, target, qemu, plugin, keys)
    else:
        b.main(runs=runs, model=model or None, tokenizer=tokenizer or None)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@task(
    help={
        "recipe": "a recipe name (recipes/NAME.yaml) or path; `invoke recipes` lists them",
        "no_container": "offline recipes: build on this host even when an engine answers",
        "base_image": "release-image recipes: the official image you downloaded (.img or "
        ".img.zip), instead of downloading it; checked against the recipe's pin if it has one",
    }
)
def image(
    c: Context, recipe: str = "duo-64m", no_container: bool = False, base_image: str = ""
) -> None:
    """Build out/<recipe>.img with its .sha256 and .manifest.json (in the builder container
    when a Docker or Podman engine answers at DOCKER_HOST)."""
    from duo_builder.image import pipeline as img

    if base_image:
        from pathlib import Path

        from duo_builder.image import recipe as rcp
        from duo_builder.image.bases import release

        r = release.with_base_image(rcp.load(recipe), Path(base_image))
        built = img.build_here(r, img.OUT)
    else:
        built = img.build(recipe, where="here" if no_container else "auto")
    print(f"{built.image}\n{built.image}.sha256 {built.sha256}\n{built.manifest}")


@task
def podman(c: Context) -> None:
    """Serve a private Podman engine for `invoke image` until Ctrl-C (prints its DOCKER_HOST)."""
    from duo_builder.image.podman import serve

    serve()


@task
def recipes(c: Context) -> None:
    """List the recipes with what each builds."""
    from duo_builder.image import recipe as rcp

    for name in rcp.available():
        r = rcp.load(name)
        print(f"{name:<20} {r.base.kind:<14} {r.description}")


@task(
    help={
        "recipe": "an offline (qemu-virt) recipe",
        "prompt": "the story's opening (any text up to 512 bytes; base64 on the kernel "
        "command line)",
        "steps": "tokens in the story",
        "timeout": "seconds before the machine is stopped",
        "ssh": "instead: PORT: boot with SSH (dropbear, key login as root with build/ssh/"
        "id_ed25519) forwarded from 127.0.0.1:PORT, and stay up until Ctrl-C",
    }
)
def qemu(
    c: Context,
    recipe: str = "qemu-virt-64m",
    prompt: str = "Once upon a time",
    steps: int = 128,
    timeout: int = 600,
    ssh: int = 0,
) -> None:
    """Build (if needed) and boot the offline image in a 64 MB QEMU machine; one story
    (or, with --ssh PORT, a machine to deploy to and bench on over SSH)."""
    from duo_builder.image import pipeline as img
    from duo_builder.image.bases import debian as qemu_image

    qemu_image.kernel_command_line(prompt, steps=steps)  # a bad prompt fails before the build
    built = img.build(recipe)
    if built.kernel is None:
        raise img.ImageError(f"{recipe} is not a QEMU recipe: boot it on the board")
    if ssh:
        from duo_builder.board import qemu_ssh

        qemu_ssh.serve(built.image, built.kernel, ssh, img.OUT / f"{recipe}-ssh")
        return
    results = img.OUT / f"{recipe}-boot"
    boot = qemu_image.boot(
        built.image, built.kernel, prompt=prompt, steps=steps, timeout=timeout, results_dir=results
    )
    print(boot.console)
    print(f"results (console.log, story.txt, story.wav): {results}")


@task(
    help={
        "host": "[USER@]HOST of the running board (user: root); the USB network: 192.168.42.1",
        "port": "its SSH port",
        "recipe": "whose payload to put there (the files an image of it holds)",
        "password": "SSH password when no key is accepted (the stock Milk-V image: milkv)",
        "rollback": "instead: put back what the last deploy replaced, remove what it added",
        "extra_model": "also copy this model file into /usr/share/storyteller/ (e.g. a "
        "faithful one, which bench --board then measures beside model.bin)",
    }
)
def deploy(
    c: Context,
    host: str,
    port: int = 22,
    recipe: str = "duo-64m",
    password: str = "",
    rollback: bool = False,
    extra_model: str = "",
) -> None:
    """Put the payload (engine, storyteller, model, voice data, config, init script) onto a
    running board over SSH, sha256-verified, replaced files kept for --rollback."""
    from pathlib import Path

    from duo_builder.board import deploy as dp
    from duo_builder.board.ssh import connect
    from duo_builder.image import recipe as rcp

    if rollback:
        with connect(host, port, password) as b:
            restored, removed, seconds = dp.rollback(b)
        print(f"{host}: rolled back in {seconds:.1f} s: {restored} restored, {removed} removed")
        return
    files = dp.items(rcp.load(recipe), [Path(extra_model)] if extra_model else [])
    with connect(host, port, password) as b:
        done = dp.deploy(b, files)
    print(
        f"{host}: {len(done.files)} files ({done.bytes / 2**20:.1f} MiB) deployed and verified "
        f"in {done.seconds:.1f} s; {done.replaced} replaced (kept for --rollback)"
    )


@task(
    help={
        "image": "the .img to write (its out/<recipe>.manifest.json must be beside it)",
        "device": "the whole TF card, e.g. /dev/sdX",
        "force": "write even an image whose manifest is missing or names another board",
        "yes": "do not ask before writing (the device's model and size are still shown)",
    }
)
def flash(c: Context, image: str, device: str, force: bool = False, yes: bool = False) -> None:
    """Write a Duo image to a TF card, then verify it: refuses mounted/system disks and
    images made for another board; shows the card's model and size and asks first."""
    from pathlib import Path

    from duo_builder.image.flash import flash as do_flash

    digest = do_flash(Path(image), Path(device), force=force, yes=yes)
    print(f"{device}: written and verified, sha256 {digest}")

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


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke's @task, with BuildError caught once for every task."""

    def decorate(body: Callable[..., Any]) -> Any:
        @functools.wraps(body)
        def caught(*a: Any, **kw: Any) -> Any:
            try:
                return body(*a, **kw)
            except BuildError as e:
                raise _fail(e) from None

        return invoke.task(caught, **kwargs)

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
        "runs": "runs per path (the contest uses 30)",
        "model": "fp32 checkpoint (default: synth15m, generated if needed; its Q8_0 "
        "conversion is made too)",
        "tokenizer": "its tokenizer (default: the bundled 32000-token one)",
        "riscv": "instead: modelled Milk-V Duo speed from instruction counts under QEMU "
        "(engine/CYCLE_MODEL.md)",
        "models": "with --riscv: more model files (PATH[,PATH...]), each on the engine's "
        "default path for its format",
        "target": "with --riscv: the riscv64 build to count (default rv64gcv)",
        "fidelity": "instead: each fast format's stories and next-token distributions "
        "against the fp32 reference (stories260K and synth15m, --seeds seeds)",
        "seeds": "with --fidelity: seeds per format (default 20)",
        "faithful": "instead: -k faithful against -k ref and -k fast on a faithful file "
        "(tok/s, RSS, story, the certified sampler's counters; --runs, default 30)",
    }
)
def bench(
    c: Context,
    runs: int = 30,
    model: str = "",
    tokenizer: str = "",
    riscv: bool = False,
    models: str = "",
    target: str = "rv64gcv",
    fidelity: bool = False,
    seeds: int = 20,
    faithful: bool = False,
) -> None:
    """The contest protocol, for each compute path side by side: tok/s, RSS, story match.
    With --riscv: instructions/token under QEMU, bytes/token, RSS and a modelled Duo tok/s."""
    from duo_builder.bench import contest as b
    from duo_builder.bench import faithful as fb
    from duo_builder.bench import fidelity as fid
    from duo_builder.bench import riscv as rb

    if fidelity:
        fid.main(seeds=seeds)
    elif faithful:
        fb.main(runs=runs, model=model or None, tokenizer=tokenizer or None)
    elif riscv:
        extra = [m for m in models.split(",") if m]
        rb.main(models=extra, model=model or None, tokenizer=tokenizer or None, target=target)
    else:
        b.main(runs=runs, model=model or None, tokenizer=tokenizer or None)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@task(
    help={
        "recipe": "a recipe name (recipes/NAME.yaml) or path; `invoke recipes` lists them",
        "no_container": "offline recipes: build on this host even when an engine answers",
    }
)
def image(c: Context, recipe: str = "duo-64m", no_container: bool = False) -> None:
    """Build out/<recipe>.img with its .sha256 and .manifest.json (in the builder container
    when a Docker or Podman engine answers at DOCKER_HOST)."""
    from duo_builder.image import pipeline as img

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
        "prompt": "the story's opening, passed on the kernel command line",
        "steps": "tokens in the story",
        "timeout": "seconds before the machine is stopped",
    }
)
def qemu(
    c: Context,
    recipe: str = "qemu-virt-64m",
    prompt: str = "Once upon a time",
    steps: int = 128,
    timeout: int = 600,
) -> None:
    """Build (if needed) and boot the offline image in a 64 MB QEMU machine; one story."""
    from duo_builder.image import pipeline as img
    from duo_builder.image.bases import debian as qemu_image

    built = img.build(recipe)
    if built.kernel is None:
        raise img.ImageError(f"{recipe} is not a QEMU recipe: boot it on the board")
    results = img.OUT / f"{recipe}-boot"
    boot = qemu_image.boot(
        built.image, built.kernel, prompt=prompt, steps=steps, timeout=timeout, results_dir=results
    )
    print(boot.console)
    print(f"results (console.log, story.txt, story.wav): {results}")


@task(help={"image": "the .img to write", "device": "the whole TF card, e.g. /dev/sdX"})
def flash(c: Context, image: str, device: str) -> None:
    """Write an image to a TF card (refuses mounted/system disks), then verify it."""
    from pathlib import Path

    from duo_builder.image.flash import flash as do_flash

    print(f"{device}: written and verified, sha256 {do_flash(Path(image), Path(device))}")

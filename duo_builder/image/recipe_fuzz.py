"""A Hypothesis fuzz harness for the recipe loader (issue 14, P1-P6).

Seeded from the shipped recipes and the hostile fixtures (tests/fixtures/recipes/); each
example mutates one of them as text (YAML tokens, bytes and long runs spliced in) or as
data (a value anywhere replaced by an arbitrary YAML value), writes it as a file and loads
it. The property: `recipe.load` returns a Recipe or raises RecipeError whose message is
one line of at most MAX_MESSAGE characters naming the file; anything else (another
exception, a multi-line or huge message) is a finding.

    python3 -m duo_builder.image.recipe_fuzz [--examples N] [--seconds S]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duo_builder.image import recipe
from duo_builder.paths import REPO

FIXTURES = REPO / "tests" / "fixtures" / "recipes"
MAX_MESSAGE = 400
# What a hostile recipe is made of: YAML syntax, tags, aliases, big numbers, odd bytes
TOKENS = [
    "&a ", "*a", "<<: *a\n", "[", "]", "{", "}", ": ", "\n", "\n  ", "- ", "? ", "!!str ",
    "!!python/object:os.system ", "!!binary ", "!!set ", "!!omap ", "!!timestamp ", "~",
    "null", "true", "no", "0x1F", "0o17", "1_000", "1e400", ".nan", "-.inf", "'", '"',
    "%YAML 1.1\n---\n", "---\n", "...\n", "\t", "#", "|\n", ">-\n", "\\", "\x00", "\x85",
    "\u2028", "\ufeff", "9" * 5000, "[" * 200, "{a: " * 100, "é", "\ud7ff",
]  # fmt: skip


def seeds() -> list[tuple[str, bytes]]:
    """(recipe name, bytes) of every shipped recipe and hostile fixture."""
    found = [(p.stem, p.read_bytes()) for p in sorted(recipe.RECIPES.glob("*.yaml"))]
    found += [(p.stem, p.read_bytes()) for p in sorted(FIXTURES.glob("*.yaml"))]
    return found


def _text_mutation(data: bytes) -> st.SearchStrategy[bytes]:
    pieces = st.one_of(
        st.sampled_from(TOKENS).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=16),
        st.text(max_size=16).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
    edit = st.tuples(st.integers(0, len(data)), st.integers(0, 8), pieces)

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        out = data
        for at, cut, piece in edits:
            at = min(at, len(out))
            out = out[:at] + piece + out[at + cut :]
        return out

    return st.lists(edit, min_size=1, max_size=6).map(apply)


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["usb", "none", "sid", "debian", "qemu-virt", "q8", "models"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(), st.none()), inner, max_size=4
        )
    ),
    max_leaves=12,
)


def _data_mutation(data: bytes) -> st.SearchStrategy[bytes]:
    try:  # the loader under test is also the one that keeps nesting and aliases bounded
        doc = recipe.parse_text(data.decode(), "seed")
    except (UnicodeDecodeError, recipe.RecipeError):
        doc = None
    if not isinstance(doc, dict):
        return st.just(data)
    paths = [(k,) for k in doc] + [
        (k, k2) for k, v in doc.items() if isinstance(v, dict) for k2 in v
    ]

    def apply(choice: tuple[tuple[Any, ...], Any]) -> bytes:
        path, value = choice
        new = recipe.parse_text(data.decode(), "seed")
        where = new
        for key in path[:-1]:
            where = where[key]
        where[path[-1]] = value
        return yaml.safe_dump(new, allow_unicode=True).encode()

    return st.tuples(st.sampled_from(paths), _VALUES).map(apply)


def mutated() -> st.SearchStrategy[tuple[str, bytes]]:
    found = seeds()

    def mutate(index: int) -> st.SearchStrategy[tuple[str, bytes]]:
        name, data = found[index]
        return st.one_of(_text_mutation(data), _data_mutation(data)).map(lambda b: (name, b))

    # an index, not sampled_from(seeds): Hypothesis would print every seed in its reports
    return st.integers(0, len(found) - 1).flatmap(mutate)


def check_one(name: str, data: bytes, folder: Path) -> str:
    """Load `data` as recipe `name`; 'ok', or the RecipeError's line. Raises on a finding."""
    path = folder / f"{name}.yaml"
    path.write_bytes(data)
    try:
        recipe.load(str(path))
    except recipe.RecipeError as e:
        message = str(e)
        if "\n" in message or len(message) > MAX_MESSAGE or path.name not in message:
            raise AssertionError(f"not one short line naming the file: {message[:600]!r}") from e
        return message
    return "ok"


def property_test(
    examples: int, findings: Path | None = None, counter: list[int] | None = None
) -> Any:
    """The Hypothesis test (a callable), running `examples` examples; a failing input is
    saved under `findings` (when given), and each run adds 1 to counter[0]."""

    @settings(
        max_examples=examples,
        deadline=None,  # no timing: a hang shows as the run not finishing
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(mutated())
    def recipe_loader_says_one_line(case: tuple[str, bytes]) -> None:
        if counter is not None:
            counter[0] += 1
        with tempfile.TemporaryDirectory(prefix="recipe-fuzz-") as tmp:
            try:
                check_one(case[0], case[1], Path(tmp))
            except BaseException:
                if findings is not None:
                    findings.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256(case[1]).hexdigest()[:16]
                    (findings / f"{case[0]}-{digest}.yaml").write_bytes(case[1])
                raise

    return recipe_loader_says_one_line


def rounds(seconds: float, work: Path) -> tuple[float, int, int, Path | None, Path]:
    """`invoke fuzz --target recipe`: rounds of the property for `seconds`; returns
    (seconds spent, execs, peak RSS MB, the finding or None, the log), which build/fuzz.py
    reports as it does the engine's targets. A finding is saved under work/findings/recipe/."""
    findings, log = work / "findings" / "recipe", work / "logs" / "recipe.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    counter, start, finding = [0], time.monotonic(), None
    before = set(findings.iterdir()) if findings.is_dir() else set()
    with open(log, "w") as out:
        while time.monotonic() - start < seconds:
            try:
                property_test(200, findings, counter)()
            except Exception as e:  # the property failed: Hypothesis's shrunk example
                out.write(f"{type(e).__name__}: {e}\n")
                new = sorted(set(findings.iterdir()) - before) if findings.is_dir() else []
                finding = new[-1] if new else log
                break
        spent = time.monotonic() - start
        out.write(f"{counter[0]} execs in {spent:.0f} s\n")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return spent, counter[0], rss, finding, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m duo_builder.image.recipe_fuzz")
    parser.add_argument("--examples", type=int, default=2000, help="examples per round")
    parser.add_argument("--seconds", type=float, default=0, help="repeat rounds this long")
    args = parser.parse_args(argv)
    start, counter = time.monotonic(), [0]
    while True:
        property_test(args.examples, counter=counter)()
        if time.monotonic() - start >= args.seconds:
            break
    spent = time.monotonic() - start
    total = counter[0]
    print(f"recipe: {total} execs in {spent:.0f} s ({total / spent:.0f}/s), 0 findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())

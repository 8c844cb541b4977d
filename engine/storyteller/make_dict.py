"""Regenerates story.dict: the CMU dictionary's entries for exactly the grammar's words,
a few more variants (EXTRA_PRONUNCIATIONS) and one single-phone word per ph_ garbage word.

The grammar lives in prompts.c (the GRAMMAR literal); reading it from there keeps the
recogniser's dictionary and grammar from drifting apart. Alternate pronunciations are kept
as cmudict spells them ("a(2)"), which PocketSphinx 0.8 and 5.x both read.

    python3 make_dict.py [--prompts prompts.c] [--cmudict PATH] [--output story.dict] [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CMUDICT = Path("/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict")

_LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
_WORD = re.compile(r"[a-z][a-z_']*")
# The grammar's garbage loop (prompts.h PROMPTS_GARBAGE_PREFIX): "ph_aa" is the phone AA
GARBAGE_PREFIX = "ph_"
# Pronunciations cmudict lacks that speakers use (measured with `invoke bench --asr`): a
# released final consonant (espeak's "Tim" was often heard as "the moon"), British "cat" with
# an open /a/ (heard as "dog"), espeak's /3:/ in "bird" (British, fast: heard as "the moon")
EXTRA_PRONUNCIATIONS = (
    "tim T IH M AH",
    "cat K AA T",
    "cat K AE T AH",
    "bird B ER D AH",
    "bird B UW D",
    "flower F L AW AH",
)
_ALTERNATE = re.compile(r"\(\d+\)$")


class DictError(Exception):
    """A grammar or dictionary problem, reported as one line."""


def _unescape(piece: str) -> str:
    def repl(m: re.Match[str]) -> str:
        c = m.group(1)
        if c not in _ESCAPES:
            raise DictError(f"unsupported escape \\{c} in the grammar literal")
        return _ESCAPES[c]

    return re.sub(r"\\(.)", repl, piece)


def grammar_from_c(source: str) -> str:
    """The text of `static const char GRAMMAR[] = "..." "...";` in prompts.c."""
    start = source.find("GRAMMAR[] =")
    if start < 0:
        raise DictError("no `GRAMMAR[] =` literal found")
    pos, pieces = start + len("GRAMMAR[] ="), []
    while True:
        rest = source[pos:]
        stripped = rest.lstrip()
        if stripped.startswith(";"):
            break
        m = _LITERAL.match(stripped)
        if not m:
            raise DictError("the GRAMMAR literal must be quoted pieces ended by ';'")
        pieces.append(_unescape(m.group(1)))
        pos += len(rest) - len(stripped) + m.end()
    return "".join(pieces)


def grammar_words(grammar: str) -> list[str]:
    """The words a JSGF grammar can produce, sorted: everything but the header lines,
    rule names, tags, weights, `public` and the operators."""
    body = "\n".join(
        line
        for line in grammar.splitlines()
        if not line.startswith("#JSGF") and not re.match(r"\s*grammar\s", line)
    )
    body = re.sub(r"<[^>]*>|\{[^}]*\}|/[^/]*/|\bpublic\b", " ", body)
    words: set[str] = set()
    for token in re.split(r"[\s|()\[\]=;*+]+", body):
        if not token:
            continue
        if not _WORD.fullmatch(token):
            raise DictError(f"grammar token {token!r} is not a lower-case word")
        words.add(token)
    return sorted(words)


def select_entries(words: list[str], cmudict_lines: list[str]) -> list[str]:
    """cmudict's lines for `words`, alternates after their word, in word order."""
    wanted = set(words)
    found: dict[str, list[str]] = {
        w: [f"{w} {w.removeprefix(GARBAGE_PREFIX).upper()}"]
        for w in words
        if w.startswith(GARBAGE_PREFIX)
    }
    for line in cmudict_lines:
        fields = line.split()
        if len(fields) < 2:
            continue
        base = _ALTERNATE.sub("", fields[0])
        if base in wanted:
            found.setdefault(base, []).append(" ".join(fields))
    for entry in EXTRA_PRONUNCIATIONS:
        word, phones = entry.split(" ", 1)
        if word in found:
            found[word].append(f"{word}({len(found[word]) + 1}) {phones}")
    missing = [w for w in words if w not in found]
    if missing:
        raise DictError("no pronunciation in the CMU dictionary for: " + ", ".join(missing))
    return [entry for w in words for entry in found[w]]


def build(prompts: Path, cmudict: Path) -> str:
    try:
        source = prompts.read_text(encoding="utf-8")
        lines = cmudict.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DictError(f"{e.filename}: {e.strerror}") from e
    words = grammar_words(grammar_from_c(source))
    return "".join(entry + "\n" for entry in select_entries(words, lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate story.dict from the grammar in prompts.c.")
    ap.add_argument("--prompts", type=Path, default=HERE / "prompts.c")
    ap.add_argument("--cmudict", type=Path, default=DEFAULT_CMUDICT)
    ap.add_argument("--output", type=Path, default=HERE / "story.dict")
    ap.add_argument("--check", action="store_true", help="fail if --output is out of date")
    args = ap.parse_args(argv)
    try:
        text = build(args.prompts, args.cmudict)
    except DictError as e:
        print(f"make_dict: {e}", file=sys.stderr)
        return 1
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(f"make_dict: {args.output} is out of date: run make_dict.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

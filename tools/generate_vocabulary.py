#!/usr/bin/env python3
"""Generate rules/vocabulary.txt: general English words that are nobody's name.

The free-text cleaner keeps a word only if it is known to be safe. rules/safe-words.txt holds the
imaging words, written by hand; this file adds ordinary English so that "Reason: call the
referring doctor" keeps its sense. The words come from Debian's `wamerican` word list (lower-case
entries only: capitalised entries are proper nouns), less every first and last name that Faker's
person providers know in any locale, because a word that can be a name cannot be known safe.
rules/safe-words.txt is loaded beside this file and always wins ("white", "young" are surnames).

    apt-get install -y wamerican
    .venv/bin/python tools/generate_vocabulary.py            # rewrite rules/vocabulary.txt
    .venv/bin/python tools/generate_vocabulary.py --check    # exit 1 if it is stale

The file is kept small by writing a word's forms on its line: "scan -ned -ner -ning -s" stands
for scan, scanned, scanner, scanning, scans (see ``dicomnode.scrub.freetext.read_words``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORD_LIST = Path("/usr/share/dict/american-english")
SAFE_WORDS = ROOT / "rules" / "safe-words.txt"
OUTPUT = ROOT / "rules" / "vocabulary.txt"
PACKAGE = "wamerican"
# A suffix longer than this starts a line of its own (keeps the lines readable).
MAX_SUFFIX = 8

_WORD = re.compile(r"[a-z]+")
_NAME_ATTRIBUTES = ("first_names", "last_names")


def _fold(text: str) -> str:
    """Lower-case ASCII form of a name ("Jos\u00e9" -> "jose"), so accented names count too."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def faker_names() -> tuple[set[str], str, int]:
    """Every first and last name in Faker's person providers, lower-cased, split into words.

    Returns the names, Faker's version and how many locales had a person provider.
    """
    import faker
    from faker.config import AVAILABLE_LOCALES

    names: set[str] = set()
    locales = 0
    for locale in sorted(AVAILABLE_LOCALES):
        try:
            module = importlib.import_module(f"faker.providers.person.{locale}")
        except ModuleNotFoundError:
            continue
        locales += 1
        provider = module.Provider
        for attribute in dir(provider):
            # first_names, first_names_male/female/nonbinary, last_names, last_names_male...
            if not attribute.startswith(_NAME_ATTRIBUTES):
                continue
            value = getattr(provider, attribute)
            if not isinstance(value, (list, tuple, set, frozenset, dict)):
                continue
            for name in value:
                for form in {name.lower(), _fold(name)}:
                    names.add(form)
                    # "van der Berg", "Smith-Jones": each part is a name on its own too.
                    names.update(part for part in re.split(r"[\s'\u2019.-]+", form) if part)
    return names, faker.VERSION, locales


def package_version(package: str) -> str:
    """The installed Debian version of ``package`` (recorded in the header)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout:
        raise SystemExit(f"{package} is not installed: apt-get install -y {package}")
    return result.stdout.strip()


def safe_words(path: Path) -> set[str]:
    """The hand-written safe words (single letters of the word list are kept only if listed)."""
    words: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        words.update(w.lower() for w in line.split("#", 1)[0].split())
    return words


def vocabulary(word_list: Iterable[str], names: set[str], safe: set[str]) -> list[str]:
    """Lower-case entries without apostrophes, minus names, sorted."""
    words = set()
    for line in word_list:
        word = line.strip()
        if not _WORD.fullmatch(word):
            continue  # capitalised (proper nouns), possessives, accented letters
        if len(word) < 2 and word not in safe:
            continue
        if word in names:
            continue
        words.add(word)
    return sorted(words)


def group(words: list[str]) -> list[str]:
    """Lines of a word and its forms: ["scan -ned -ning -s", ...] (words sorted)."""
    lines: list[list[str]] = []
    head = ""
    for word in words:
        if head and word.startswith(head) and 0 < len(word) - len(head) <= MAX_SUFFIX:
            lines[-1].append("-" + word[len(head) :])
        else:
            head = word
            lines.append([word])
    return [" ".join(line) for line in lines]


def render(word_list_path: Path) -> str:
    names, faker_version, locales = faker_names()
    words = vocabulary(
        word_list_path.read_text(encoding="utf-8").splitlines(), names, safe_words(SAFE_WORDS)
    )
    header = [
        "# General English words that are not a person's name: the free-text cleaner keeps them.",
        "# GENERATED by tools/generate_vocabulary.py; do not edit (add words to safe-words.txt).",
        f"# Source: Debian package {PACKAGE} {package_version(PACKAGE)} ({word_list_path}),",
        "#   its all-lower-case entries without apostrophes, 2 letters or more.",
        f"# Less {len(names)} first and last names (and their parts) of Faker {faker_version}'s",
        f"#   person providers in {locales} locales. rules/safe-words.txt wins over this list.",
        "# Regenerate: apt-get install -y wamerican && .venv/bin/python tools/generate_vocabulary.py",
        "# Format: a word, then its forms as suffixes: 'scan -ned -s' = scan scanned scans.",
        f"# Words: {len(words)}",
    ]
    return "\n".join(header + group(words)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--words", type=Path, default=WORD_LIST, help="the word list to read")
    args = parser.parse_args(argv)
    if not args.words.is_file():
        raise SystemExit(f"{args.words} not found: apt-get install -y {PACKAGE}")
    text = render(args.words)
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run tools/generate_vocabulary.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(text.encode())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

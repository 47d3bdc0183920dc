#!/usr/bin/env python3
"""`make lint`: README, docs/ and the code's comments speak of the project as it is, never of how it was made.

Flags, in prose (RULES): numbered periods of work (a session or sprint with an ordinal; a session, stop or sprint
with a number), issue and pull request numbers (also a bare number after `#`), commit hashes (7 to 40 hex
characters with a letter and a digit), owners (`owner:` and a name) and dated stories (any ISO date from 2020 on).
Prose is every line of Markdown and text files, and the comments and docstrings of code; lock files, JSON,
bench/results/ and the generated parts of the docs (between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, which
carry the benches' dates) are left out.
tests/unit/test_check_no_history.py shows what each rule catches and what it lets through.

    .venv/bin/python scripts/check_no_history.py [FILE ...]    (default: every file git knows of, ignored ones not)
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDINAL = r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|\d+(?:st|nd|rd|th))"
RULES = {
    "a numbered period of work": re.compile(
        rf"\b{ORDINAL}[ -](?:session|sprint)s?\b|\b(?:session|stop|sprint)s? #?\d+\b(?! ?(?:s|ms|seconds?)\b)"
        r"|\b(?:earlier|previous|later) sessions?\b", re.I),
    "an issue number": re.compile(r"\b(?:issues?|tickets?|PR|pull request)s? #?\d+\b|(?:^|[\s(\[,;])#\d+\b", re.I),
    "a commit hash": re.compile(r"(?<![\w.:/-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"),
    "an owner": re.compile(r"\bowners?:\s*\w+", re.I),
    "a date": re.compile(r"\b20[2-9]\d-[01]\d-[0-3]\d\b"),
}
PROSE_SUFFIXES = {".md", ".txt", ".rst"}
SKIPPED = re.compile(r"(^|/)bench/results/|\.lock$|\.json$|(^|/)(LICENSE|NOTICE)$")
GENERATED = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.S)


def findings(text: str) -> list[tuple[int, str, str]]:
    """(line number, rule, the words) for each match in prose `text`; generated parts count as blank lines."""
    text = GENERATED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return [(number, rule, match.group(0).strip()) for number, line in enumerate(text.splitlines(), 1)
            for rule, pattern in RULES.items() for match in pattern.finditer(line)]


def prose_of_python(source: str) -> str:
    """The comments and docstrings of Python `source`, each on its own line number; the rest blanked."""
    lines = [""] * (source.count("\n") + 1)
    previous = tokenize.NEWLINE
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            docstring = token.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT,
                                                                      tokenize.DEDENT, tokenize.NL)
            if token.type == tokenize.COMMENT or docstring:
                for offset, part in enumerate(token.string.splitlines()):
                    lines[token.start[0] - 1 + offset] += " " + part
            if token.type not in (tokenize.COMMENT, tokenize.NL):
                previous = token.type
    except (tokenize.TokenError, SyntaxError):
        return source
    return "\n".join(lines)


def prose_of_other(source: str) -> str:
    """The `#` comments of a shell script, Makefile, Dockerfile or configuration file."""
    return "\n".join(line[line.index("#"):] if line.lstrip().startswith("#") or " #" in line else ""
                     for line in source.splitlines())


def prose(path: Path) -> str | None:
    if SKIPPED.search(path.as_posix()):
        return None
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return None
    if path.suffix in PROSE_SUFFIXES:
        return text
    if path.suffix == ".py" or text.startswith("#!/usr/bin/env python"):
        return prose_of_python(text)
    return prose_of_other(text)


def files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [Path(name) for name in listed if name and (ROOT / name).is_file()]


def main(paths: list[Path]) -> int:
    found = 0
    for path in paths:
        text = prose(ROOT / path if not path.is_absolute() else path)
        for number, rule, words in findings(text or ""):
            print(f"{path}:{number}: {rule}: {words!r}")
            found += 1
    if found:
        print(f"{found} place(s) speak of how the project was made: say what it is instead (git log keeps the rest)",
              file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main([Path(arg) for arg in sys.argv[1:]] or files()))

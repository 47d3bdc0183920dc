"""scripts/check_no_history.py (`make lint`): it flags words about how the project was made, in prose and in code
comments, and lets ordinary text, hashes that are data and the generated parts of the docs through."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from devkit.project import ROOT

SCRIPT = ROOT / "scripts" / "check_no_history.py"
_spec = importlib.util.spec_from_file_location("check_no_history", SCRIPT)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

BAD = {
    "The table holds the fourth session's runs.": "a numbered period of work",
    "Two runs of the third session with tcmalloc.": "a numbered period of work",
    "Closing note (stop 20).": "a numbered period of work",
    "as measured in session 4": "a numbered period of work",
    "kept from earlier sessions": "a numbered period of work",
    "what issue 13 asks for": "an issue number",
    "see issues 3 and 12": "an issue number",
    "fixed in #12": "an issue number",
    "(PR 7) moved it": "an issue number",
    "tcmalloc, committed first (e66fb74), saves more": "a commit hash",
    "the code of 6108c50 with jemalloc": "a commit hash",
    "at commit 233d848c0ffee1234567890abcdef12345678901": "a commit hash",
    "<!-- section: quickstart (owner: lead) -->": "an owner",
    "2026-12-07's run on the new machine": "a date",
    "Measured 2026-11-26 (full MNIST)": "a date",
}
GOOD = [
    "The image trains and serves; a session of the SageMaker SDK is made per command.",
    "The tests train the model once per session (a pytest fixture).",
    "`docker stop -t 20 NAME` stops it; SIGKILL follows 30 s later; the worker stops 20 s after",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 in the lock file",
    "the IAM policy's Version is 2012-10-17",
    "0x7fffffff is the largest int32; dtype float32; the first 1000 images; 25 MB",
    "git describe gives v1.0.0-3-gabc1234-cpu",
    "Accept: application/json; port 8080; a 404 for an unknown path; HTTP/1.1",
    "# a comment heading in Markdown",
    "defaced and effaced are words made of hex letters",
    "the first stop of a `docker stop` is a SIGTERM",
]


@pytest.mark.parametrize("line, rule", BAD.items())
def test_words_about_how_the_project_was_made_are_flagged(line, rule):
    assert rule in {found_rule for _, found_rule, _ in check.findings(line)}, line


@pytest.mark.parametrize("line", GOOD)
def test_ordinary_text_passes(line):
    assert check.findings(line) == []


def test_generated_parts_are_left_out_and_line_numbers_kept():
    text = "intro\n<!-- performance:begin -->\nrun 2026-12-08 10:00 UTC\n<!-- performance:end -->\nissue 3\n"
    assert check.findings(text) == [(5, "an issue number", "issue 3")]


def test_only_comments_and_docstrings_of_python_are_prose():
    source = ('"""Module doc: see issue 14."""\n'
              'HASH = "e66fb74"  # the stop 20 tag\n'
              'def f():\n'
              '    """Its doc."""\n'
              '    return "2026-12-07"\n')
    found = {(number, rule) for number, rule, _ in check.findings(check.prose_of_python(source))}
    assert found == {(1, "an issue number"), (2, "a numbered period of work")}


def test_comments_of_other_files_are_prose():
    text = 'set -e\necho "issue 3"  # made in the fourth session\n# owner: lead\n'
    found = {(number, rule) for number, rule, _ in check.findings(check.prose_of_other(text))}
    assert found == {(2, "a numbered period of work"), (3, "an owner")}


def test_the_command_names_each_place_and_fails(tmp_path):
    bad, good = tmp_path / "bad.md", tmp_path / "good.md"
    bad.write_text("# Notes\n\nThe runs of 2026-12-06.\n")
    good.write_text("# Notes\n\nThe runs of `make bench`.\n")
    failing = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True)
    assert failing.returncode == 1 and f"{bad}:3: a date: '2026-12-06'" in failing.stdout
    passing = subprocess.run([sys.executable, str(SCRIPT), str(good)], capture_output=True, text=True)
    assert passing.returncode == 0, passing.stdout


def test_lock_files_and_bench_results_are_not_read():
    assert check.prose(ROOT / "docker" / "requirements-cpu.lock") is None
    assert check.SKIPPED.search("bench/results/serving.batch.json")

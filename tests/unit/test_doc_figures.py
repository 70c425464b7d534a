"""Every measured figure in README, CHANGELOG and docs/ comes from a results file.

A figure is quoted as a link to the results file a bench script wrote, with the keys
of its figures as the link title, in the order the numbers appear in the text:

    [78.6 ms](../../bench/results/announce.json "baseline_ms")
    [2.6-2.8 s](bench/results/x.json "burst_min_s burst_max_s")

The link must resolve (relative to the document, as on GitHub), and some record of that
file (bench/results.py appends one per run) must hold every key with the value shown,
rounded to the digits shown. Any other measured-looking figure in prose (a number with
ms or µs, a ratio like 1.25x, seconds with decimals) fails the test, unless it is
followed by ``<!-- not measured -->`` (a setting, a default or an example: say so in
the text). Code spans and blocks (log lines, configuration) are not prose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = {REPO / "docs" / "configuration.md"}  # from the schema (test_docs.py)

SOURCE = re.compile(r"\[([^\]]+)\]\(([^)\s]*bench/results/[^)\s]+\.json) \"([^\"]+)\"\)")
NUMBER = re.compile(r"(?<![\d.])([+-]?)(\d+(?:\.\d+)?)")
FIGURE = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?:\s?(?:ms|µs)\b|x\b|\.\d+\s?s\b)"
                    r"|(?<![\w.])\d+\.\d+\s?s\b")
EXEMPT = re.compile(r"\S+\s?(?:ms|µs|s|x)?<!-- not measured -->")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
COMMENT = re.compile(r"<!--(?! not measured -->).*?-->", re.S)


def documents() -> list[Path]:
    docs = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [d for d in docs if d.exists() and d not in GENERATED]


def prose(text: str) -> str:
    """The text without code blocks, code spans and comments (line numbers kept)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731
    return CODE.sub(blank, FENCE.sub(blank, COMMENT.sub(blank, text)))


def shown_numbers(text: str) -> list[tuple[float, int]]:
    """(value, digits after the point) of each number in a figure's text."""
    out = []
    for sign, digits in NUMBER.findall(text):
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        out.append((float(sign + digits), decimals))
    return out


def check_source(doc: Path, text: str, target: str, keys: str) -> str | None:
    """None when the figure matches a record of its results file, else why not."""
    path = (doc.parent / target).resolve()
    if not path.is_file():
        return f"[{text}]: {target} does not exist"
    names = keys.split()
    numbers = shown_numbers(text)
    if len(numbers) != len(names):
        return f"[{text}]: {len(numbers)} number(s) but {len(names)} key(s) {names}"
    records = json.loads(path.read_text())
    for record in records:
        figures = record.get("figures", {})
        if all(k in figures and round(float(figures[k]), d) == round(v, d)
               for k, (v, d) in zip(names, numbers, strict=True)):
            return None
    latest = {k: records[-1]["figures"].get(k) for k in names} if records else {}
    return f"[{text}]: no record of {target} has {names} = the numbers shown (latest: {latest})"


def findings(doc: Path, root: Path = REPO) -> list[str]:
    text = prose(doc.read_text())
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{doc.relative_to(root)}:{lineno}"
        for shown, target, keys in SOURCE.findall(line):
            why = check_source(doc, shown, target, keys)
            if why:
                problems.append(f"{where}: {why}")
        rest = EXEMPT.sub(" ", SOURCE.sub(" ", line))
        problems += [f"{where}: figure {m.group(0)!r} has no source in bench/results/"
                     for m in FIGURE.finditer(rest)]
    return problems


@pytest.mark.parametrize("doc", documents(), ids=lambda d: str(d.relative_to(REPO)))
def test_every_quoted_figure_has_its_source(doc):
    problems = findings(doc)
    assert not problems, "\n".join(problems)


# -- the checker itself -----------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "b.json").write_text(json.dumps([
        {"figures": {"base_ms": 78.63, "lo_s": 2.6, "hi_s": 2.84, "gain_ms": -1.2}},
        {"figures": {"base_ms": 80.0}},
    ]))
    (tmp_path / "docs").mkdir()
    return tmp_path


def check(tree: Path, text: str) -> list[str]:
    doc = tree / "docs" / "x.md"
    doc.write_text(text)
    return findings(doc, tree)


def test_a_sourced_figure_passes(tree):
    assert check(tree, 'It takes [78.6 ms](../bench/results/b.json "base_ms").\n') == []
    assert check(tree, 'Now [80 ms](../bench/results/b.json "base_ms").\n') == []
    assert check(tree, 'Bursts [2.6-2.8 s](../bench/results/b.json "lo_s hi_s").\n') == []
    assert check(tree, 'Gain [-1.2 ms](../bench/results/b.json "gain_ms").\n') == []


def test_a_figure_no_record_holds_fails(tree):
    [why] = check(tree, 'It takes [78.7 ms](../bench/results/b.json "base_ms").\n')
    assert "no record of ../bench/results/b.json" in why and "docs/x.md:1" in why


def test_numbers_from_two_records_do_not_make_one_figure(tree):
    assert check(tree, 'A [80 ms, 2.6 s](../bench/results/b.json "base_ms lo_s").\n')


def test_a_missing_results_file_or_key_count_fails(tree):
    assert "does not exist" in check(tree, '[1 ms](../bench/results/no.json "a")\n')[0]
    assert "key(s)" in check(tree, '[1-2 ms](../bench/results/b.json "base_ms")\n')[0]


@pytest.mark.parametrize("figure", ["took 73 ms", "~8 ms of imports", "1.25x the batch",
                                    "2.68 s of 3 s", "in 16.5 s", "123x faster", "0.5 µs"])
def test_an_unsourced_figure_in_prose_fails(tree, figure):
    [why] = check(tree, f"Intro.\n\nIt {figure} here.\n")
    assert "has no source" in why and "docs/x.md:3" in why


@pytest.mark.parametrize("text", ["a `12 ms` log line", "```\nhookpack: ok (41 ms)\n```",
                                  "a 30 ms<!-- not measured --> pause", "deadline 15 s",
                                  "4 x 32 cores", "version 3.0", "<!-- 12 ms -->"])
def test_code_settings_and_plain_numbers_are_not_figures(tree, text):
    assert check(tree, text + "\n") == []

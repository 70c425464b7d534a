from __future__ import annotations

import re
from pathlib import Path

from hookpack.docsgen import reference

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the schema; regenerate it with
    `hookpack config reference --write docs/configuration.md`."""
    assert (REPO / "docs/configuration.md").read_text() == reference()


# --- the operator guide's troubleshooting section cannot drift from the code ----------

GUIDE = REPO / "docs/operator-guide.md"
# Text in the quoted lines that comes from outside hookpack (Python's tomllib, the
# kernel's extack, strerror): not checked.
EXTERNAL = ("Expected ']' at the end of a table declaration", "No such file or directory",
            "TC classifier not found", "connection refused", "No module named")
# Parts of a quoted line that vary from run to run: paths, names, numbers, quoted values,
# config keys, the key lists of "unknown key(s)", backends, interfaces.
_VARIABLE = re.compile(
    r"(?<![\w])/[^\s():;,'`]+|[\w.-]+\.example\.test\b|[\w-]+\.qmp\b|\b\d+(?:\.\d+)?\b"
    r"|'[^']*'|\"[^\"]*\"|\b[a-z_]+\.[a-z_]+\b|(?<=key\(s\) )[\w, ]+|(?<=allowed: )[\w, ]+"
    r"|\b[a-z]+(?:-[a-z]+)+/(?:pre|post)\b"  # <hpath>/<phase>
    r"|\biptables-\w+-restore\b|\b(?:nf_tables|legacy)\b|\b(?:tap|eth)\d+\b|http:\S*")
# The dispatcher's frame around an action's message (hookpack/log.py).
_ACTION_LINE = re.compile(r"^hookpack [\w-]+: \S+: (?:changed|nochange|skipped|failed|timeout"
                          r"|veto): (?P<text>.*) \([\w-]+/(?:pre|post), \d+ changes?, \d+ ms\)$")
_DOCTOR_LINE = re.compile(r"^(?:PASS|WARN|FAIL) [\w -]+: (?P<text>.*)$")
_PUNCTUATION = re.compile(r"[():;,?]| -> ")


def _source_text() -> str:
    """All of hookpack's source, with implicitly concatenated string literals joined."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "hookpack").rglob("*.py")))
    text = re.sub(r"[\"']\s*\n\s*(?:rf|fr|f|r)?[\"']", "", text)
    return text.replace('\\"', '"')


def _quoted_lines() -> list[str]:
    section = GUIDE.read_text().split("\n## Troubleshooting\n", 1)[1]
    blocks = re.findall(r"^```\n(.*?)^```$", section, flags=re.S | re.M)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _message(line: str) -> str:
    for pattern in (_ACTION_LINE, _DOCTOR_LINE):
        match = pattern.match(line)
        if match:
            return match["text"]
    assert line.startswith("hookpack: "), f"not a hookpack line: {line}"
    return line.removeprefix("hookpack: ")


def _phrases(message: str) -> list[str]:
    """The runs of two or more fixed words between variable parts and punctuation."""
    for text in EXTERNAL:
        message = message.replace(text, " ")
    phrases = []
    for fragment in _VARIABLE.split(message):
        phrases += [p.strip() for p in _PUNCTUATION.split(fragment)]
    return [p for p in phrases if len(p.split()) >= 2]


def _in_source(phrase: str, source: str) -> bool:
    """The phrase is in the source whole, or as two pieces (a placeholder between)."""
    if phrase in source:
        return True
    words = phrase.split(" ")
    return any(" ".join(words[:i]) in source and " ".join(words[i:]) in source
               for i in range(1, len(words)))


def test_troubleshooting_messages_still_exist_in_the_source():
    source = _source_text()
    lines = _quoted_lines()
    assert len(lines) >= 20, "the troubleshooting section quotes fewer lines than expected"
    missing = [f"{phrase!r} (from: {line[:70]}...)" for line in lines
               for phrase in _phrases(_message(line)) if not _in_source(phrase, source)]
    assert not missing, "quoted in docs/operator-guide.md but not in hookpack/:\n" + \
        "\n".join(missing)


def test_the_drift_check_catches_a_changed_message():
    source = _source_text()
    line = ("FAIL qmp: web1.example.test: QEMU pid 7 runs but QMP does not answer (x): "
            "pinning and disk-grow cannot reach it -> restore the socket")
    assert all(_in_source(p, source) for p in _phrases(_message(line)))
    drifted = line.replace("does not answer", "stays silent")
    assert not all(_in_source(p, source) for p in _phrases(_message(drifted)))


# --- every link in the docs resolves -------------------------------------------------

def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def _links() -> list[tuple[Path, str]]:
    pages = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        text = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.S | re.M)
        found += [(page, target) for target in re.findall(r"\]\(([^)\s]+)\)", text)]
    return found


def test_every_doc_link_resolves():
    links = _links()
    assert len(links) >= 20
    broken = []
    for page, target in links:
        if re.match(r"^[a-z]+:", target):
            continue  # an external URL
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)

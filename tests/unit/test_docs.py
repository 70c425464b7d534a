from __future__ import annotations

from pathlib import Path

from hookpack.docsgen import reference

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the schema; regenerate it with
    `hookpack config reference --write docs/configuration.md`."""
    assert (REPO / "docs/configuration.md").read_text() == reference()

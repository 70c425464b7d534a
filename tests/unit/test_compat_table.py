"""docs/compatibility.md is the table rendered from the labs' committed records."""

from __future__ import annotations

import pytest
from vmtestbed.ganeti import compat


def test_the_table_is_rendered_from_the_committed_records():
    assert compat.TABLE.read_text() == compat.render_committed(), (
        "docs/compatibility.md is stale: python -m vmtestbed.ganeti.compat render")


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_each_lab_has_a_record_of_every_fact(version):
    assert list(compat.load(version)) == list(compat.FACTS)


def test_a_fact_outside_the_table_is_refused():
    with pytest.raises(KeyError, match="not a fact"):
        compat.note("3.0", "no-such-fact", "x")

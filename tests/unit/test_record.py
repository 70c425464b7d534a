"""hookpack.record against dataclasses, its oracle: the same class bodies behave alike."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Generic, TypeVar

import pytest

from hookpack import record as rec

T = TypeVar("T")


def twins(frozen: bool):
    """The same body decorated by dataclasses and by record."""
    made = []
    for deco, fld in ((dataclasses.dataclass(frozen=frozen), dataclasses.field),
                      (rec.record(frozen=frozen), rec.field)):
        class Shape:
            """A doc."""

            name: str
            size: int = 3
            tags: list[str] = fld(default_factory=list)
            note: str = fld(default="", compare=False)
            raw: bytes = fld(default=b"", compare=False, repr=False)

            def double(self) -> int:
                return self.size * 2

        made.append(deco(Shape))
    return made


@pytest.mark.parametrize("frozen", [False, True])
def test_a_record_behaves_as_the_dataclass_of_the_same_body(frozen):
    dc, rc = twins(frozen)
    for args, kwargs in (((("a",), {})), (("a", 5, ["x"]), {"note": "n", "raw": b"r"}),
                         (("b",), {"size": 7})):
        d, r = dc(*args, **kwargs), rc(*args, **kwargs)
        assert repr(d) == repr(r)
        assert [getattr(d, f.name) for f in dataclasses.fields(d)] == \
            [getattr(r, n) for n in rec.fields(r)]
        assert r.double() == d.double()
    # equality over compared fields only, never with another class
    assert (dc("a", note="x") == dc("a", note="y")) == (rc("a", note="x") == rc("a", note="y"))
    assert (dc("a") == dc("b")) == (rc("a") == rc("b")) is False
    assert rc("a") != dc("a")
    # a default_factory gives each instance its own value
    one, two = rc("a"), rc("a")
    assert one.tags is not two.tags
    if frozen:
        # over the compared fields, the very value dataclasses computes
        assert hash(rc("a", tags=(), note="x")) == hash(rc("a", tags=(), note="y")) == \
            hash(dc("a", tags=()))
        with pytest.raises(AttributeError):
            rc("a").size = 4
        with pytest.raises(rec.FrozenInstanceError):
            del rc("a").size
    else:
        with pytest.raises(TypeError):
            hash(rc("a"))
        r = rc("a")
        r.size = 9
        assert r.size == 9
    assert rc.__doc__ == "A doc."
    assert rc.__init__.__qualname__.endswith("Shape.__init__")  # tracebacks name the class


def test_post_init_runs_and_a_class_keeps_its_own_methods():
    @rec.record
    class Clock:
        seconds: float
        start: float = rec.field(default=0.0)

        def __post_init__(self) -> None:
            self.start = 100.0

        def __repr__(self) -> str:
            return "mine"

    c = Clock(1.5)
    assert (c.seconds, c.start, repr(c)) == (1.5, 100.0, "mine")


def test_generic_records_and_subclass_fields():
    @rec.record
    class Box(Generic[T]):
        finished: bool
        value: T | None = None

    @rec.record(frozen=True)
    class Base:
        a: int

    @rec.record(frozen=True)
    class Child(Base):
        b: int = 2

    assert Box[int](True, 3).value == 3
    assert rec.fields(Child) == ("a", "b")
    assert Child(1) == Child(1, 2) and Child(1) != Base(1)


def test_replace_asdict_and_the_errors_dataclasses_also_raises():
    _, rc = twins(True)
    r = rc("a", 4, ["t"], note="n")
    assert rec.replace(r, size=5) == rc("a", 5, ["t"])
    assert rec.replace(r, size=5).note == "n"
    assert rec.asdict(r) == {"name": "a", "size": 4, "tags": ["t"], "note": "n", "raw": b""}
    with pytest.raises(TypeError, match="no field 'nope'"):
        rec.replace(r, nope=1)
    with pytest.raises(ValueError, match="mutable default"):
        @rec.record
        class Bad:
            items: list[int] = []  # the mistake under test
    with pytest.raises(TypeError, match="follows one with a default"):
        @rec.record
        class Order:
            a: int = 1
            b: int
    with pytest.raises(ValueError):
        rec.field(default=1, default_factory=int)


def test_importing_record_does_not_import_dataclasses_or_inspect():
    code = ("import sys; import hookpack.record; "
            "print(sorted({'dataclasses', 'inspect'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/").stdout
    assert out.strip() == "[]"


def test_hookpack_shaping_apply_path_imports_no_dataclasses():
    """The modules `hookpack shaping apply` and a hook import: records only."""
    code = ("import sys; import hookpack.cli, hookpack.hook, hookpack.dispatch, "
            "hookpack.actions.shaping.action, hookpack.actions.shaping.reconcile, "
            "hookpack.actions.shaping.legacy, hookpack.confd; "
            "print(sorted({'dataclasses', 'inspect'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/").stdout
    assert out.strip() == "[]"



def test_no_module_of_hookpack_imports_dataclasses():
    """One mechanism for value classes (docs/development.md)."""
    import re
    from pathlib import Path

    root = Path(rec.__file__).parent
    users = [str(path.relative_to(root)) for path in sorted(root.rglob("*.py"))
             if re.search(r"^\s*(from dataclasses import|import dataclasses)",
                          path.read_text(), re.M)]
    assert users == []

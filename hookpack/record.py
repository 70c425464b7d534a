"""``@record``: the part of ``@dataclasses.dataclass`` hookpack uses, at a fraction of its
start-up cost.

Every hookpack process defines a few dozen value classes before it does anything (the
`hookpack shaping apply` path: 25). ``import dataclasses`` imports ``inspect`` (and with
it ``ast``, ``dis``, ``tokenize``), and each decorated class compiles its methods one by
one and builds a signature for its docstring. A record compiles its methods in one
``exec`` and imports nothing beyond ``typing``. `bench/record_cost.py` times both, whole
process against whole process, on the classes of that path.

What it does, as ``dataclass`` does: ``__init__`` (fields in order, defaults,
``field(default_factory=...)``, ``__post_init__``), ``__repr__`` and ``__eq__`` over the
fields (``compare=False``/``repr=False`` leave one out), and with ``frozen=True`` no
assignment after ``__init__`` and a ``__hash__`` over the compared fields; without it the
class is unhashable, as a mutable dataclass is. A method the class defines itself is kept.
Not supported (no caller needs them): ``order``, ``slots``, ``kw_only``, ``InitVar``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

C = TypeVar("C", bound=type)

MISSING: Any = object()
_FACTORY: Any = object()  # the default of a parameter whose field has a default_factory


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class Field:
    """One field: what ``field(...)`` gives, and, named, what a record keeps of each."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any = MISSING,
                 default_factory: Callable[[], Any] | None = None, compare: bool = True,
                 repr: bool = True, name: str = "") -> None:
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr
        self.name = name


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | None = None,
          compare: bool = True, repr: bool = True) -> Any:
    if default is not MISSING and default_factory is not None:
        raise ValueError("field: default and default_factory both given")
    return Field(default, default_factory, compare, repr)


@overload
def record(cls: C, /) -> C: ...
@overload
def record(*, frozen: bool = False) -> Callable[[C], C]: ...


@dataclass_transform(field_specifiers=(field,))
def record(cls: Any = None, /, *, frozen: bool = False) -> Any:
    def wrap(klass: C) -> C:
        return _build(klass, frozen)
    return wrap if cls is None else wrap(cls)


def fields(cls_or_obj: Any) -> tuple[str, ...]:
    """The field names of a record class or record, in order."""
    return tuple(s.name for s in cls_or_obj.__record_specs__)


def replace(obj: Any, **changes: Any) -> Any:
    """A copy of record ``obj`` with ``changes`` (as ``dataclasses.replace``)."""
    names = fields(obj)
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    return type(obj)(**{n: changes[n] if n in changes else getattr(obj, n) for n in names})


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of record ``obj`` as a dict (one level: values are not converted)."""
    return {n: getattr(obj, n) for n in fields(obj)}


def _specs(cls: type) -> list[Field]:
    specs: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for spec in base.__dict__.get("__record_specs__", ()):
            specs[spec.name] = spec
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is what we avoid
    for name, annotation in own.items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, Field):
            spec = Field(value.default, value.default_factory, value.compare, value.repr,
                         name)
            if value.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        else:
            if isinstance(value, (list, dict, set)):
                raise ValueError(f"{cls.__name__}.{name}: mutable default; use "
                                 "field(default_factory=...)")
            spec = Field(value, name=name)
        specs[name] = spec
    seen_default = False
    for spec in specs.values():
        has_default = spec.default is not MISSING or spec.default_factory is not None
        if seen_default and not has_default:
            raise TypeError(f"{cls.__name__}: field {spec.name!r} without a default "
                            "follows one with a default")
        seen_default = seen_default or has_default
    return list(specs.values())


def _build(cls: C, frozen: bool) -> C:
    specs = _specs(cls)
    ns: dict[str, Any] = {"__hp_set": object.__setattr__, "__hp_factory": _FACTORY,
                          "__hp_frozen": FrozenInstanceError}
    params, body = ["self"], []
    for i, s in enumerate(specs):
        if s.default_factory is not None:
            ns[f"__hp_f{i}"] = s.default_factory
            params.append(f"{s.name}=__hp_factory")
            value = f"__hp_f{i}() if {s.name} is __hp_factory else {s.name}"
        elif s.default is not MISSING:
            ns[f"__hp_d{i}"] = s.default
            params.append(f"{s.name}=__hp_d{i}")
            value = s.name
        else:
            params.append(s.name)
            value = s.name
        body.append(f"  __hp_set(self, {s.name!r}, {value})" if frozen
                    else f"  self.{s.name} = {value}")
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    compared = "".join(f"self.{s.name}," for s in specs if s.compare)
    other = compared.replace("self.", "other.")
    shown = ", ".join(f"{s.name}={{self.{s.name}!r}}" for s in specs if s.repr)
    methods = {
        "__init__": f"def __init__({', '.join(params)}):\n" + ("\n".join(body) or "  pass"),
        "__repr__": f"def __repr__(self):\n  return f'{{type(self).__qualname__}}({shown})'",
        "__eq__": ("def __eq__(self, other):\n  if other.__class__ is self.__class__:\n"
                   f"    return ({compared}) == ({other})\n  return NotImplemented"),
    }
    if frozen:
        methods["__setattr__"] = ("def __setattr__(self, name, value):\n"
                                  "  raise __hp_frozen(f'cannot assign to field {name!r}')")
        methods["__delattr__"] = ("def __delattr__(self, name):\n"
                                  "  raise __hp_frozen(f'cannot delete field {name!r}')")
        methods["__hash__"] = f"def __hash__(self):\n  return hash(({compared}))"
    exec("\n".join(methods.values()), ns)  # noqa: S102 - source built above from field names
    own = cls.__dict__
    for name in methods:
        if own.get(name) is not None:
            continue  # the class's own (a class with its own __eq__ has __hash__ None)
        fn = ns[name]
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, fn)
    if not frozen and own.get("__hash__", None) is None:
        cls.__hash__ = None  # type: ignore[assignment]  # mutable with __eq__: unhashable
    cls.__record_specs__ = tuple(specs)  # type: ignore[attr-defined]
    return cls

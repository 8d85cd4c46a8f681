"""Typed config sections: frozen dataclasses whose fields carry a default and a one-line doc,
built from a mapping (ConfigDict, dict) with the same checks in every section.

`build(cls, values, path)` refuses unknown keys (suggesting the nearest field), wrong types and,
through the section's own `validate()`, bad values, always as `errors.ConfigError` naming the
field's full dotted path, the value and what is allowed. Missing keys take the field's default,
so a notebook may pass only what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NoReturn

import ml_collections

from errors import ConfigError

SECTION_TYPES = (Mapping, ml_collections.ConfigDict)


def field(default: Any, doc: str) -> Any:
    """A dataclass field with its default and a one-line doc (shown in configs/default.py)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def doc(cls: type, name: str) -> str:
    """The one-line doc of `cls.name` ("" if it has none)."""
    return next(f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.name == name)


def join(path: str, name: str) -> str:
    """'data' + 'name' -> 'data.name'; '' + 'seed' -> 'seed'."""
    return f"{path}.{name}" if path else name


def describe_type(hint: Any) -> str:
    """'int', 'int or None', 'tuple of int', ... for messages."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return f"tuple of {describe_type(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "None"
    if hint is float:
        return "finite float"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (ints pass as floats; bools are not ints)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple | list) and all(matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        )
    return not isinstance(hint, type) or isinstance(value, hint)


def _coerce(value: Any, hint: Any) -> Any:
    """Lists become tuples for tuple fields; integral numbers become float for float fields."""
    if isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, numbers.Integral):
        return float(value)
    return value


def fail(path: str, value: Any, requirement: str) -> NoReturn:
    """Raises the one message shape: '<path>=<value> <requirement>'."""
    raise ConfigError(f"{path}={value!r} {requirement}")


def require(ok: bool, path: str, value: Any, requirement: str) -> None:
    """fail(...) unless `ok`."""
    if not ok:
        fail(path, value, requirement)


def one_of(path: str, value: Any, allowed: Iterable[Any]) -> None:
    """Refuses `value` unless it is in `allowed`, listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        fail(path, value, f"is not known; allowed: {', '.join(map(str, allowed))}")


@contextlib.contextmanager
def prefixed(section: str) -> Iterator[None]:
    """Re-raises a library validator's ValueError ('name=value ...', no config path) as the
    ConfigError of `section.name=value ...`."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{section}.{err}") from err


def user_fields(cls: type, fixed: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields a config may set (all but `fixed`, which the run derives itself)."""
    fixed = set(fixed)
    return [f for f in dataclasses.fields(cls) if f.name not in fixed and f.init]


def build(cls: type, values: Any, path: str, fixed: Mapping[str, Any] | None = None) -> Any:
    """`cls(**values, **fixed)` after refusing unknown keys and wrong types, then `validate()`.

    Args:
      cls: a frozen dataclass whose fields have defaults.
      values: the section's mapping (a ConfigDict from a config file, flags or a notebook dict).
      path: the section's dotted path in the run config ("" for the top level), for messages.
      fixed: fields the run sets itself (e.g. the data shape of a model); a mapping that sets
        one of them is refused like an unknown key.
    """
    fixed = dict(fixed or {})
    if not isinstance(values, SECTION_TYPES):
        fail(path, values, "must be a config section (a ConfigDict or dict).")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in user_fields(cls, fixed)]
    kwargs = dict(fixed)
    for key, value in dict(values).items():
        if key in fixed:
            raise ConfigError(
                f"{join(path, key)} is not a field of {path}: the run sets it (it comes from "
                f"data.* and the conditioning); allowed: {', '.join(names)}."
            )
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {join(path, close[0])}?" if close else ""
            where = f"of {path}" if path else "of the run config"
            raise ConfigError(
                f"{join(path, key)} is not a field {where}; allowed: {', '.join(names)}.{hint}"
            )
        if not matches(value, hints[key]):
            raise ConfigError(
                f"{join(path, key)}={value!r} ({type(value).__name__}) has the wrong type; "
                f"expected {describe_type(hints[key])}."
            )
        kwargs[key] = _coerce(value, hints[key])
    instance = cls(**kwargs)
    if hasattr(instance, "validate"):
        instance.validate()
    return instance


def to_dict(instance: Any, fixed: Iterable[str] = ()) -> dict[str, Any]:
    """The user fields of a section as a plain dict (tuples kept)."""
    return {f.name: getattr(instance, f.name) for f in user_fields(type(instance), fixed)}

"""Dataclasses from plain dicts (a config file's TOML tables, a circuit file's JSON objects), every
key and value checked against the fields' annotations: an unknown key is refused naming the valid
ones, a missing one naming it, a value of the wrong type naming its key and the type expected."""

from __future__ import annotations

from dataclasses import MISSING, fields
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import SettingsError


def checked_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data`'s keys and values, checked against dataclass `cls` (lists stand for tuples); SettingsError
    names the first problem."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise SettingsError(f"unknown key(s) {unknown} in [{where}]; valid keys: {', '.join(sorted(known))}")
    missing = [f.name for f in fields(cls)
               if f.init and f.default is MISSING and f.default_factory is MISSING and f.name not in data]
    if missing:
        raise SettingsError(f"[{where}] needs the key(s) {missing}")
    hints = get_type_hints(cls)
    for key, value in data.items():
        if not _fits(value, hints[key]):
            raise SettingsError(f"{where}.{key} = {value!r:.80} is not {_describe(hints[key])}")
    return dict(data)


def _fits(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(_fits(item, arg) for item, arg in zip(value, args))
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return (isinstance(value, dict) and all(isinstance(key, str) for key in value)
                and (not args or all(_fits(item, args[1]) for item in value.values())))
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(_describe(args[0]))}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(_describe(args[0]))}"
        return f"a list [{', '.join(map(_describe, args))}]"
    if origin is list:
        return f"a list of {_plural(_describe(args[0]))}"
    if origin is dict and args:
        return f"a table of {_plural(_describe(args[1]))}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "unset",
             dict: "a table"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _plural(description: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(description, description)

"""Typed parameters: one builder from a rules-file table to a frozen dataclass, one error.

Every tagger and night stage declares its parameters as a frozen dataclass (``Params``);
:func:`build_params` turns the TOML table ``[taggers.x]`` / ``[stages.y]`` into it, and every
mistake becomes a :class:`ConfigError` that names the key, the type it wants and, for a
choice, the allowed values. Range checks live in the dataclass's ``__post_init__`` (raise
``ValueError`` naming the field); the builder adds where the value came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

P = TypeVar("P")


class ConfigError(ValueError):
    """The rules file is malformed; the message names the file and the key, and what would fix it."""


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a tagger or stage that takes none."""


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("nothing (leave the key out)" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural.get(args[0], _type_name(args[0]))}"
        return "a list"
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (TOML's int for a float, a list for a tuple), or ConfigError."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))) if args else tuple(value)
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        if len(args) == 2:
            return {_coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return build_params(tp, value, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def build_params(cls: type[P], table: Mapping[str, Any] | None, where: str) -> P:
    """``cls`` (a dataclass) from the rules-file table ``table`` found at ``where`` (e.g.
    ``"glia.toml [taggers.lm]"``). Missing keys take the dataclass defaults.

    Raises :class:`ConfigError` for an unknown key (listing the known ones), a value of the
    wrong type (naming the type, or the allowed values of a choice), or a value the dataclass
    itself rejects (its ``__post_init__`` message, prefixed with ``where``).
    """
    if isinstance(table, cls):
        return table
    table = dict(table or {})
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def params_dict(params: Any) -> dict[str, Any]:
    """A Params dataclass as plain values (tuples as lists), e.g. for a tagger's ``config()``."""
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out

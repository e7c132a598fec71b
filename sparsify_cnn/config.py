"""The base of every config: a generic, versioned round trip through plain dicts (what plans,
checkpoints and reports store). ``to_dict`` gives JSON types (tuples as lists, nested configs as
dicts); ``from_dict`` rebuilds the dataclass from its field types, refuses fields it does not
know and versions newer than its own, and leaves the values to ``__post_init__`` to check.
Example::

    @dataclass(frozen=True)
    class MyConfig(Config):
        layers: tuple[str, ...] = ()
        version: int = 1

    MyConfig.from_dict(MyConfig(layers=("conv1",)).to_dict()) == MyConfig(layers=("conv1",))
"""

from __future__ import annotations

import dataclasses
import types
import typing

from .errors import InputError


class Config:
    """Mixed into a (frozen) dataclass: ``to_dict`` / ``from_dict``. A ``version`` field, when the
    class has one, is the version of its dict format; a dict of a newer version is refused."""

    FIELDS_NAME: typing.ClassVar[str] = ""  # what an unknown-field error calls the fields ("training settings")

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            what = cls.FIELDS_NAME or f"{cls.__name__} fields"
            raise InputError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "version" in known and isinstance(data.get("version"), int):
            newest = known["version"].default
            if data["version"] > newest:
                raise InputError(f"{cls.__name__} version {data['version']} is newer than this sparsify reads "
                                 f"({newest}): upgrade sparsify")  # fmt: skip
        hints = typing.get_type_hints(cls)
        return cls(**{name: _typed(hints[name], value) for name, value in data.items()})


def _plain(value):
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _typed(hint, value):
    """``value`` (plain JSON data) as the type ``hint`` names: lists become tuples, dicts configs."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            arg_origin = typing.get_origin(arg) or arg
            if isinstance(value, list) and arg_origin is tuple:
                return _typed(arg, value)
            if isinstance(value, dict) and isinstance(arg, type) and issubclass(arg, Config):
                return arg.from_dict(value)
        return value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], v) for v in value)
        if len(args) == len(value):
            return tuple(_typed(a, v) for a, v in zip(args, value))
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value)
    return value

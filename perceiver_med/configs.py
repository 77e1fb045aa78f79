"""Config dataclasses <-> JSON, for every config the package stores (a run's settings, a model's keywords).

`to_dict(config)` gives the JSON form of any config dataclass; `from_dict(cls, data)` rebuilds one and checks it
on the way: each value's type against the dataclass's annotations (nested dataclasses, lists, dicts, Optional;
floats finite), unknown keys refused, then the dataclass's own `check()` (ranges, known names). Every refusal is
one ValueError that starts with the field's dotted path (`decision.temperature must be ...`). A dataclass may name
keys that files of earlier versions hold and that no longer mean anything in it (`RETIRED`): they are read and
dropped here, and nowhere else.

`defaults_from(constructor)` gives a config dataclass the defaults of the constructor it configures, so the two
never hold two sets of defaults.
"""
from __future__ import annotations

import inspect
import json
import math
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass

from perceiver_med.errors import UserError


def to_dict(config):
    """A config dataclass (or a list or dict of them) as JSON values: fields in declaration order, tuples as lists."""
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, dict):
        return {key: to_dict(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(value) for value in config]
    return config


def from_dict(cls: type, data, where: str = ""):
    """The dataclass `cls` from its JSON form, checked: ValueError naming the field (`where` is cls's own path).

    A key the data leaves out takes the field's default; a key the dataclass does not hold is refused (unless cls
    lists it in RETIRED: dropped), as is a value of another type. The built object's `check()`, where it has one,
    checks ranges and names.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the file'} must be a JSON object, not {shown(data)}")
    known = {f.name: f for f in fields(cls) if f.init}
    retired = getattr(cls, "RETIRED", ())
    unknown = [key for key in data if key not in known and key not in retired]
    if unknown:
        raise ValueError(f"{_at(where, unknown[0])} is not a setting this version knows")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = _value(hints[name], data[name], _at(where, name))
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise ValueError(f"{_at(where, name)} is missing")
    try:
        config = cls(**values)
    except (TypeError, ValueError, UserError) as exc:  # the dataclass's own parsing (a window's text)
        raise ValueError(f"{where or cls.__name__}: {exc}") from None
    if hasattr(config, "check"):
        try:
            config.check()
        except ValueError as exc:  # its message starts with the field's name
            raise ValueError(_at(where, str(exc))) from None
    return config


def _value(hint, value, where: str):
    """`value` as the annotation `hint` wants it, or ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]  # the configs' unions are all Optional
        return _value(inner, value, where)
    if is_dataclass(hint):
        return from_dict(hint, to_dict(value), where)  # a dataclass given in Python is checked as its JSON form
    if hint is typing.Any:
        return value
    if hint is list or origin is list:
        if not isinstance(value, (list, tuple)):  # a tuple: given in Python, where JSON gives a list
            raise ValueError(f"{where} must be a list, not {shown(value)}")
        item = args[0] if args else typing.Any
        return [_value(item, v, f"{where}[{k}]") for k, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a JSON object, not {shown(value)}")
        item = args[1] if args else typing.Any
        return {key: _value(item, v, f"{where}.{key}") for key, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, not {shown(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where} must be a whole number, not {shown(value)}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, not {shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be text, not {shown(value)}")
        return value
    raise TypeError(f"{where}: a config field of type {hint} has no JSON form")


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def shown(value) -> str:
    """A value as a message quotes it: its JSON, cut to 40 characters."""
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def defaults_from(constructor):
    """A class decorator, applied under @dataclass: each annotated field the class gives no value takes the default
    of `constructor`'s keyword argument of the same name (tuples as lists, their JSON form).

    A model's config dataclass declares which of its constructor's arguments a run stores, with their JSON types;
    their defaults are the constructor's, so `Model()` is the model `train` builds. A field the constructor lacks,
    or takes without a default, is a TypeError when the class is defined.
    """
    parameters = inspect.signature(constructor).parameters

    def apply(cls):
        for name in cls.__dict__.get("__annotations__", {}):
            if name in cls.__dict__:  # the config's own default (a derived value: None)
                continue
            parameter = parameters.get(name)
            if parameter is None or parameter.default is inspect.Parameter.empty:
                raise TypeError(f"{cls.__name__}.{name}: {constructor.__qualname__} takes no {name} with a default")
            default = parameter.default
            if isinstance(default, (list, tuple, dict)):
                setattr(cls, name, field(default_factory=lambda default=default: to_dict(default)))
            else:
                setattr(cls, name, default)
        return cls

    return apply

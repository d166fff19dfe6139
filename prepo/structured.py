"""Dataclass configs through OmegaConf: YAML files read safely (with a ``base:`` chain), dotted ``key=value``
overrides, merged onto the dataclasses' defaults and checked; every error is one ConfigError line naming the key.

Values are taken literally: every ``${`` is escaped before OmegaConf sees it (a config file must not read the
environment or other keys), and a ``${...}`` where no string goes is refused.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

# a config holds about a hundred values: an alias chain ("billion laughs") that expands past this is refused before
# anything copies it node by node, and so is nesting deeper than any config needs
YAML_MAX_NODES = 10_000
YAML_MAX_DEPTH = 32


class ConfigError(ValueError):
    """A bad key or value in a config file or override (the message names the key)."""


# --- checks the types cannot express: ranges, choices, combinations ------------------------------------------------

def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


BOUNDS = {">= 0": lambda v: v >= 0, "> 0": lambda v: v > 0, ">= 1": lambda v: v >= 1,
          "in [0, 1]": lambda v: 0 <= v <= 1, "in [0, 1)": lambda v: 0 <= v < 1, "in (0, 1]": lambda v: 0 < v <= 1}


def check(section, prefix: str, **rules) -> None:
    """Every float field of ``section`` is finite (inf and NaN pass most range checks); then each field named in
    ``rules`` lies within its bound (a key of BOUNDS; None passes) or is one of its choices (a tuple)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            require(math.isfinite(value), f"{prefix}.{f.name}", f"must be a finite number, got {value}")
    for name, rule in rules.items():
        value = getattr(section, name)
        if isinstance(rule, tuple):
            require(value in rule, f"{prefix}.{name}", f"must be one of {rule}, got {value!r}")
        else:
            require(value is None or BOUNDS[rule](value), f"{prefix}.{name}", f"must be {rule}, got {value}")


# --- YAML files -------------------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader (no tags, no code) that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first at line {seen[key_node.value]})",
                        key_node.start_mark)
                seen[key_node.value] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict, depth: int = 0) -> int:
    """Nodes in the YAML tree once every alias is copied out (what OmegaConf builds), up to YAML_MAX_NODES."""
    if depth > YAML_MAX_DEPTH:
        raise ConfigError(f"nested deeper than {YAML_MAX_DEPTH} levels (or an alias that contains itself)")
    if id(node) not in memo:
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += _expanded_size(child, memo, depth + 1)
            if total > YAML_MAX_NODES:
                raise ConfigError(f"expands to more than {YAML_MAX_NODES} values (aliases repeat whole "
                                  "subtrees); write the values out")
        memo[id(node)] = total
    return memo[id(node)]


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file ({} when empty; duplicate keys, deep nesting and alias bombs refused), or a
    ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {what}")
    try:
        loader = _Loader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None:
                _expanded_size(node, {})
            loaded = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}: malformed YAML{where}: {problem}") from None
    except ConfigError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(path)!r}: nested deeper than {YAML_MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"config file {str(path)!r}: {str(exc).splitlines()[0][:200]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
    return loaded


def yaml_layers(path: str | Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """(file, mapping) for a YAML file and the ``base: other.yaml`` chain under it (relative to each file), the
    deepest base first; each mapping without its ``base`` key. Merge them in order (:func:`build`)."""
    path = Path(path)
    raw = read_yaml(path)
    if "base" not in raw:
        return [(path, raw)]
    base_path = (path.parent / str(raw.pop("base"))).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base_path} includes itself")
    return yaml_layers(base_path, seen + (path.resolve(),)) + [(path, raw)]


# --- mappings and overrides onto a dataclass, by OmegaConf ------------------------------------------------------------

def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(schema, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, sections expanded."""
    keys = []
    for name, tp in _fields(schema).items():
        keys += valid_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [prefix + name]
    return keys


def _field(schema, key: str):
    """(type without Optional, its origin: list, dict, a section or the type itself, whether it may be None) of the
    dotted ``key``; a ConfigError listing the valid keys beside it when there is no such key."""
    cls, parts = schema, key.split(".")
    for i, part in enumerate(parts):
        tp = _fields(cls).get(part)
        if tp is None or (i < len(parts) - 1 and not dataclasses.is_dataclass(tp)):
            prefix = ".".join(parts[:i])
            valid = ", ".join(valid_keys(cls, prefix + "." if prefix else ""))
            raise ConfigError(f"unknown config key(s) {key}; valid keys: {valid}")
        cls = tp
    optional = type(None) in typing.get_args(tp)
    inner = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    return inner, typing.get_origin(inner) or inner, optional


def _bad_value(schema, key: str, value) -> ConfigError:
    """The one line for a value that does not fit ``key``'s type (a long value cut to 80 characters)."""
    inner, origin, _ = _field(schema, key)
    shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:60]}... ({len(repr(value))} characters)"
    expected = ("a mapping" if dataclasses.is_dataclass(inner) or origin is dict else "a list" if origin is list else
                "true or false" if inner is bool else "a string" if inner is str else None)
    if expected is None:
        return ConfigError(f"{key}: cannot read {shown} as {getattr(inner, '__name__', inner)}")
    return ConfigError(f"{key}: expected {expected}, got {shown}")


def _literal(value):
    """``value`` (a string, or mappings and lists of them) with every ``${`` escaped, so OmegaConf keeps it as text."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + r"\${", value)
    if isinstance(value, Mapping):
        return {k: _literal(v) for k, v in value.items()}
    return [_literal(v) for v in value] if isinstance(value, list) else value


def _checked(schema, tree: Mapping, prefix: str = "") -> dict:
    """``tree`` (sections or dotted keys) checked where OmegaConf's merge would name no key (a mapping or list given
    for another kind of value, a ``${...}`` where no string goes); empty sections left out; every ``${`` escaped."""
    out = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        try:
            inner, origin, _ = _field(schema, key)
        except ConfigError:  # an unknown key: named by the merge
            out[name] = _literal(value)
            continue
        if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
            out[name] = _checked(schema, value, key + ".")
        elif value is not None and (isinstance(value, Mapping) != (origin is dict or dataclasses.is_dataclass(inner))
                                    or isinstance(value, list) != (origin is list)
                                    or (isinstance(value, str) and "${" in value and inner is not str)):
            raise _bad_value(schema, key, value)
        elif value is not None or not dataclasses.is_dataclass(inner):
            out[name] = _literal(value)
    return out


def build(schema, *mappings: Mapping):
    """The ``schema`` dataclass of its defaults, then ``mappings`` in order (nested sections, e.g. from YAML, or
    dotted keys, e.g. ``{"optim.lr": 1e-5}``), merged by OmegaConf; every key and value checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    try:
        layers = []
        for mapping in mappings:
            layers.append(OmegaConf.create())
            for key, value in _checked(schema, mapping).items():  # dotted keys become nested sections
                OmegaConf.update(layers[-1], str(key), value)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), *layers))
    except ConfigKeyError as exc:
        if exc.object_type is schema or "." in exc.full_key:  # a key of the schema or of a section: named with the
            _field(schema, exc.full_key)                      # valid keys beside it (raises)
        raise ConfigError(f"{exc.full_key}: {str(exc).splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        key, line = exc.full_key, str(exc).splitlines()[0]
        if isinstance(exc, MissingMandatoryValue):
            raise ConfigError(f"{key}: missing (it has no default)") from None
        try:
            error = _bad_value(schema, key, getattr(exc, "value", None)) if key else ConfigError(line)
        except ConfigError:  # a key inside a mapping or list field, e.g. data.fields.prompt_field
            error = ConfigError(f"{key}: {line}")
        raise error from None


def _dotlist_value(text: str):
    """``text`` as OmegaConf's dotlist reads a value (YAML), or the text itself where that fails."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
    except (OmegaConfBaseException, ValueError, yaml.YAMLError):  # e.g. an unclosed bracket, a 5000-digit number
        return text


def override(schema, item: str) -> dict:
    """One ``dotted.key=value`` as ``{key: value}``, the value read by OmegaConf's dotlist (YAML); a list key also
    takes ``a, b``; nothing after ``=`` is null where the key may be null, else empty."""
    key, eq, text = (part.strip() for part in item.partition("="))
    if not eq:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. selection.strategy=random")
    inner, origin, optional = _field(schema, key)
    if dataclasses.is_dataclass(inner):
        raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{next(iter(_fields(inner)))}=...")
    value = _dotlist_value(text) if text else None if optional else [] if origin is list else ""
    if origin is list and isinstance(value, str):
        listed = _dotlist_value(f"[{text}]")
        value = listed if isinstance(listed, list) else text
    if value is None and not optional:
        raise _bad_value(schema, key, text)
    return {key: value}

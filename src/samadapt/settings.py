"""Settings: dataclasses with nested groups, YAML round trip, dotted ``--set`` overrides, one error type.

A command's settings are a dataclass (:mod:`samadapt.config`); a field whose type is itself a dataclass is a
*group*: the settings object of one component (``engine``: :class:`~samadapt.training.engine.EngineSettings`,
``pruning``, ``box_noise``, ``phpg``, ``propagation``, ...), handed to that component as it is. The same
grammar serves every command:

- YAML: a mapping of setting: value, a group as a nested mapping (``engine: {lr: 1.0e-4, steps: 200}``);
- ``--set KEY=VALUE``: ``KEY`` dotted for a group's field (``engine.lr=1e-4``, ``pruning.policy=class``),
  ``VALUE`` a YAML scalar or flow collection (``classes=[liver,spleen]``).

Precedence: the dataclass's defaults < the file < the overrides; a group's fields left unset keep the
command's default group (``PromiseConfig``'s engine has its own lr and batch size), so one field can be
changed alone. Every class validates itself in ``__post_init__`` and raises :class:`ConfigError`, whose
message names the setting and what to use instead; a bad setting held by a file names the file.

A command may rename its settings: a class attribute ``renamed`` (``ClassVar[dict[str, str]]``, old key ->
new dotted key) lets files written before the rename still load (:func:`migrate_renamed`: a run's saved
``config.yaml`` resumes), and ``--set`` of an old key fails with a line naming the new one.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from samadapt.errors import ConfigError
from samadapt.io.atomic import atomic_path

T = TypeVar("T")


def setting_error(group: str):
    """``bad(message)`` for the settings of ``group``: a :class:`ConfigError` ``"<group> setting <message>"``."""
    return lambda what: ConfigError(f"{group} setting {what}")


def config_to_dict(config: Any) -> dict:
    """A settings dataclass as a plain dict fit for YAML: groups -> nested dicts, tuples -> lists, paths ->
    strings."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return config_to_dict(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return str(value)
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def merge_settings(base: dict, update: dict, cls: type | None = None) -> dict:
    """``update`` over ``base``, nested mappings merged key by key (a group set in both keeps both's fields).
    With ``cls`` (the settings dataclass they describe) only its groups merge; a setting whose value is a
    mapping (``phpg.first_weights``) is replaced whole."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    merged = dict(base)
    for key, value in update.items():
        group = group_class(hints.get(key)) if cls is not None else None
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and (cls is None or group is not None):
            merged[key] = merge_settings(merged[key], value, group)
        else:
            merged[key] = value
    return merged


def _nested(path: list[str], value: Any) -> dict:
    """``["engine", "lr"], 1e-4`` -> ``{"engine": {"lr": 1e-4}}``: ``value`` under the dotted key's parts."""
    for part in reversed(path[1:]):
        value = {part: value}
    return {path[0]: value}


def expand_dotted(values: dict) -> dict:
    """``{"engine.lr": 1e-4, "engine": {"steps": 5}}`` -> ``{"engine": {"lr": 1e-4, "steps": 5}}``."""
    result: dict = {}
    for key, value in values.items():
        result = merge_settings(result, _nested(str(key).split("."), value))
    return result


def dotted_settings(values: dict, prefix: str = "") -> dict:
    """A nested settings mapping as ``--set`` keys: ``{"engine": {"lr": 1e-4}}`` -> ``{"engine.lr": 1e-4}``
    (every mapping is taken for a group: for settings without mapping values, e.g. ``PretrainConfig``)."""
    flat: dict = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(dotted_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["engine.lr=1e-4", "objective=phpg"]`` -> ``{"engine": {"lr": 0.0001}, "objective": "phpg"}``."""
    result: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path):
            raise ConfigError(f"--set '{pair}': write it as key=value, or group.key=value for a group's setting")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set '{pair}': the value is not valid YAML; quote it") from None
        entry = _nested(path, value)
        if path[0] in result and isinstance(result[path[0]], dict) != isinstance(entry[path[0]], dict):
            raise ConfigError(f"--set '{pair}': {path[0]} is set both as a whole and by its fields; choose one")
        result = merge_settings(result, entry)
    return result


def migrate_renamed(values: dict, renamed: dict[str, str]) -> dict:
    """``values`` (a settings file's mapping) with each old key of ``renamed`` moved to its new dotted key,
    e.g. ``{"prune_ratio": 0.5}`` -> ``{"pruning": {"ratio": 0.5}}``. An old key whose name is now a group
    (``pruning: class``, a value that is not a mapping) moves to that group's field. A new key given as well
    wins over the old one."""
    moved: dict = {}
    kept = dict(values)
    for old, new in renamed.items():
        if old not in kept or (old == new.split(".")[0] and isinstance(kept[old], dict)):
            continue
        moved = merge_settings(moved, _nested(new.split("."), kept.pop(old)))
    return merge_settings(moved, kept)


def group_class(hint: Any) -> type | None:
    """The dataclass a field's type names (``EngineSettings``), None for any other type."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _scalar(default: Any, value: Any, name: str, source: str) -> Any:
    """``value`` converted to the kind of ``default`` where YAML read it otherwise (a list for a tuple, an int
    or a string such as "1e-4" for a float)."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{source}: {name} must be a number, got '{value}'") from None
    return value


def make_config(cls: type[T], values: dict, source: str = "configuration", base: Any = None,
                prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``values`` (nested mappings for its groups), starting from ``base`` (an
    instance whose settings fill what ``values`` leaves out; default: the class's defaults). Unknown keys
    are refused with the list of known ones (and a renamed key with its new name)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.metadata.get("setting", True)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        renamed = getattr(cls, "renamed", {})
        moved = [f"{prefix}{key} is now {renamed[key]}" for key in unknown if key in renamed]
        if moved:
            raise ConfigError(f"{source}: {'; '.join(moved)} (--set {renamed[unknown[0]]}=...)")
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(prefix + key for key in unknown)}; known: "
                          f"{', '.join(prefix + key for key in fields)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        field, group = fields[key], group_class(hints.get(key))
        if base is not None:
            default = getattr(base, key)
        elif field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        if group is None:
            converted[key] = _scalar(default, value, prefix + key, source)
        elif isinstance(value, dict):
            converted[key] = make_config(group, value, source, default if isinstance(default, group) else None,
                                         f"{prefix}{key}.")
        elif not isinstance(value, group):
            renamed = getattr(cls, "renamed", {}).get(key)
            example = renamed or f"{prefix}{key}.{next(iter(f.name for f in dataclasses.fields(group)))}"
            raise ConfigError(f"{source}: {prefix}{key} is a group of settings, not one value; set its fields, "
                              f"e.g. --set {example}={value}")
        else:
            converted[key] = value
    try:
        return dataclasses.replace(base, **converted) if base is not None else cls(**converted)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def read_settings_file(path: str | os.PathLike[str]) -> dict:
    """The mapping a YAML settings file holds (:class:`ConfigError` naming the file when it is not one)."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read YAML config ({type(err).__name__}); check the file") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of setting: value")
    return loaded


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: dict | None = None) -> T:
    """Defaults of ``cls``, updated from a YAML file (if given; old keys renamed, see :func:`migrate_renamed`),
    then from ``overrides`` (as :func:`parse_overrides` gives them). A bad setting that the file itself
    holds is reported with the file's name (``<path>: ...``)."""
    values: dict = {}
    if path is not None:
        values = migrate_renamed(read_settings_file(path), getattr(cls, "renamed", {}))
    source = str(path) if path else "options"
    try:
        return make_config(cls, merge_settings(values, overrides or {}, cls), source=source)
    except ConfigError as err:
        if path is None or str(err).startswith(f"{path}:"):
            raise
        try:  # the file's settings alone: when they fail, the file is at fault, not the overrides
            make_config(cls, values, source=source)
        except ConfigError:
            raise ConfigError(f"{path}: {err}") from None
        raise


def command_settings(cls: type[T], path: str | os.PathLike[str] | None, options: dict, overrides: dict) -> T:
    """A command's settings: defaults < the YAML file ``path`` < ``options`` (a command's own options; those
    that are None were not given) < ``overrides`` (nested, as :func:`parse_overrides` or :func:`expand_dotted`
    give them). A bad setting of the file is reported with the file's name (:func:`load_config`)."""
    given = {key: value for key, value in options.items() if value is not None}
    return load_config(cls, path, merge_settings(given, overrides, cls))


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML atomically (groups as nested mappings)."""
    with atomic_path(path, suffix=".yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return Path(path)


def check_choices(config: Any, choices: dict[str, tuple[str, ...]], bad) -> None:
    """Raise ``bad(message)`` when a setting of ``config`` is not one of its allowed strings."""
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise bad(f"{key}={getattr(config, key)!r}: use one of {', '.join(allowed)}")


def check_integers(config: Any, keys: tuple[str, ...], minimum: int, bad) -> None:
    """Raise ``bad(message)`` unless each setting is an integer (not a bool) >= ``minimum``."""
    for key in keys:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(f"{key}={value!r}: use an integer >= {minimum}")


def check_numbers(config: Any, keys: tuple[str, ...], bad, fraction: bool = False) -> None:
    """Raise ``bad(message)`` unless each setting is a number >= 0 (``fraction``: between 0 and 1)."""
    for key in keys:
        value = getattr(config, key)
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not value >= 0 or (fraction and value > 1):
            raise bad(f"{key}={value!r}: " + ("use a fraction between 0 and 1" if fraction else "use a number >= 0"))


def check_flags(config: Any, keys: tuple[str, ...], bad) -> None:
    """Raise ``bad(message)`` unless each setting is a bool."""
    for key in keys:
        if not isinstance(getattr(config, key), bool):
            raise bad(f"{key}={getattr(config, key)!r}: use true or false")


def check_groups(config: Any, bad) -> None:
    """Raise ``bad(message)`` unless each group of ``config`` holds an instance of its settings class."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        group = group_class(hints.get(f.name))
        if group is not None and not isinstance(getattr(config, f.name), group):
            raise bad(f"{f.name}={getattr(config, f.name)!r}: give a {group.__name__} (in files and --set: "
                      f"its fields, {f.name}.KEY=VALUE)")


def names_list(value: Any) -> Any:
    """A comma-separated string of names as a list (``"liver, spleen"`` -> ``["liver", "spleen"]``); any
    other value as it is."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value

"""``--config study.toml``: the CLI's settings and per-strategy search-space overrides from one file.

A study file holds top-level settings named like the flags (``trials = 16``,
``max-freeze-depth = 0``, ``fractions = [0.1, 1.0]``) and tables
``[search_space.<strategy>]`` whose entries replace distributions of that
strategy's built-in ``SPACE``::

    [search_space.<strategy>]
    lr = {type = "float", low = 1e-4, high = 1e-2, log = true}
    freeze_depth = {high = 1}            # type and the other bounds kept from the built-in space

Explicit flags win over the file, the file over presets (the file's values become
the parser's defaults). Spaces are kept as plain *specs* (dicts) so that they
hash, print and write to study.json; Optuna distributions are made from them
only where a search needs them. Every bad entry is one :class:`ConfigError`
naming the file, the key and the fix, raised before Ray starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.errors import ConfigError

SPACE_TABLE = "search_space"
#: argparse destinations a file cannot set (they act on this invocation, not on the study)
_NOT_IN_FILE = frozenset({"help", "config", "print_config"})
#: --log-to names -> (module to import, pip extra)
TRACKERS: dict[str, tuple[str, str]] = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboardX", "tensorboard"),
                                        "wandb": ("wandb", "wandb")}


# ---------------------------------------------------------------- trackers

def parse_log_to(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``mlflow,tensorboard`` -> ('mlflow', 'tensorboard'); ConfigError naming the valid trackers."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    for n in out:
        if n not in TRACKERS:
            raise ConfigError(f"--log-to: unknown tracker {n!r}; valid: {', '.join(TRACKERS)} (any comma list)")
    return out


def check_trackers(log_to: tuple[str, ...]) -> None:
    """Refuse a tracker whose package is missing, naming the extra that installs it (before Ray starts)."""
    for name in log_to:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--log-to {name} needs the {module} package: pip install 'hsistudy[{extra}]'")


# ---------------------------------------------------------------- the file

def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, raw search-space tables) of a study file; ConfigError on unreadable or malformed TOML."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    spaces = data.pop(SPACE_TABLE, {})
    if not isinstance(spaces, dict):
        raise ConfigError(f"{path}: {SPACE_TABLE} must be a table of [{SPACE_TABLE}.<strategy>] tables")
    return data, spaces


def parser_defaults(parser: argparse.ArgumentParser, settings: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """File settings -> argparse defaults (so explicit flags still win); ConfigError on an unknown key or value."""
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_IN_FILE and a.dest != argparse.SUPPRESS}
    out: dict[str, Any] = {}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            hint = f"; a search space goes under [{SPACE_TABLE}.<strategy>]" if isinstance(value, dict) else ""
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}; valid settings: "
                              f"{', '.join(sorted(d.replace('_', '-') for d in actions))}")
        flag = action.option_strings[-1] if action.option_strings else key
        if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key} = {value!r}: {flag} is a switch; write {key} = true or false")
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)  # the CLI's comma lists
        elif isinstance(value, dict | bool):
            raise ConfigError(f"{path}: {key} = {value!r} is not a value {flag} takes; see --help for {flag}")
        elif isinstance(value, str | Path):
            value = str(value)  # argparse converts string defaults with the flag's type
        _check_type(action, key, value, flag, path)
        if action.choices is not None and not isinstance(value, bool) and value not in action.choices:
            raise ConfigError(f"{path}: {key} = {value!r}; {flag} takes one of {', '.join(map(str, action.choices))}")
        out[dest] = value
    return out


_TYPE_NAMES = {int: "a whole number", float: "a number"}


def _check_type(action: argparse.Action, key: str, value: Any, flag: str, path: Path) -> None:
    """Convert ``value`` with the flag's type now: argparse would only print its usage for a bad default,
    naming neither the file nor the key."""
    kind = action.type
    if not callable(kind) or isinstance(value, bool):
        return
    what = _TYPE_NAMES.get(kind, f"a {getattr(kind, '__name__', 'value')}")
    if isinstance(value, str):
        try:
            kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            detail = "" if kind in _TYPE_NAMES else f" ({exc})"
            raise ConfigError(f"{path}: {key} = {value!r}: {flag} takes {what}{detail}") from None
    elif kind is int and not isinstance(value, int) or kind is float and not isinstance(value, int | float):
        raise ConfigError(f"{path}: {key} = {value!r}: {flag} takes {what}")


# ---------------------------------------------------------------- --print-config

def to_toml(settings: Mapping[str, Any], spaces: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The effective configuration as a study file (None values are left out: TOML has no null)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if v is not None]
    for strategy, space in spaces.items():
        lines += ["", f"[{SPACE_TABLE}.{_toml_key(strategy)}]"]
        lines += [f"{name} = {{{', '.join(f'{k} = {_toml_value(v)}' for k, v in spec.items() if v is not None)}}}"
                  for name, spec in space.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string

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
from study.strategies import STRATEGIES, get_strategy

SPACE_TABLE = "search_space"
#: argparse destinations a file cannot set (they act on this invocation, not on the study)
_NOT_IN_FILE = frozenset({"help", "config", "print_config"})
#: --log-to names -> (module to import, pip extra)
TRACKERS: dict[str, tuple[str, str]] = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboardX", "tensorboard"),
                                        "wandb": ("wandb", "wandb")}
_TYPES = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}


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
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key} = {value!r}: {flag} is a switch; write {key} = true or false")
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)  # the CLI's comma lists
        elif isinstance(value, dict | bool):
            raise ConfigError(f"{path}: {key} = {value!r} is not a value {flag} takes; see --help for {flag}")
        elif isinstance(value, str | Path):
            value = str(value)  # argparse converts string defaults with the flag's type
        if action.choices is not None and not isinstance(value, bool) and value not in action.choices:
            raise ConfigError(f"{path}: {key} = {value!r}; {flag} takes one of {', '.join(map(str, action.choices))}")
        out[dest] = value
    return out


# ---------------------------------------------------------------- search spaces

def dist_spec(dist: Any) -> dict[str, Any]:
    """An Optuna distribution as a plain dict (the form that is hashed, printed and written to study.json)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    if isinstance(dist, FloatDistribution | IntDistribution):
        kind = "int" if isinstance(dist, IntDistribution) else "float"
        step = None if dist.log or (kind == "int" and dist.step == 1) else dist.step
        return {"type": kind, "low": dist.low, "high": dist.high, "log": bool(dist.log), "step": step}
    raise TypeError(f"no spec for the distribution {dist!r}")


def make_dist(spec: Mapping[str, Any]) -> Any:
    """A spec -> the Optuna distribution it describes."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec["type"] == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    cls = IntDistribution if spec["type"] == "int" else FloatDistribution
    step = spec.get("step")
    if cls is IntDistribution:
        return cls(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")), step=int(step or 1))
    return cls(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
               step=None if step is None else float(step))


def space_specs(space: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: dist_spec(dist) for name, dist in sorted(space.items())}


def resolve_spaces(raw: Mapping[str, Any], path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Validate ``[search_space.<strategy>]`` tables against each strategy's built-in space -> full specs."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for strategy, table in raw.items():
        where = f"{path}: [{SPACE_TABLE}.{strategy}]"
        if strategy not in STRATEGIES:
            raise ConfigError(f"{where}: unknown strategy; valid: {', '.join(sorted(STRATEGIES))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of <hyperparameter> = {{type = ..., ...}} entries")
        builtin = get_strategy(strategy).load_search_space()
        out[strategy] = {}
        for name, entry in table.items():
            if name not in builtin:
                raise ConfigError(f"{where} {name}: not a hyperparameter of this strategy (its trainable would "
                                  f"ignore it); searchable: {', '.join(sorted(builtin))}")
            out[strategy][name] = _entry_spec(entry, dist_spec(builtin[name]), f"{where} {name}")
    return out


def _entry_spec(entry: Any, base: dict[str, Any], where: str) -> dict[str, Any]:
    """One override entry, merged onto the built-in spec when it keeps the built-in type; checked in full."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: write an inline table, e.g. {{type = \"float\", low = 1e-4, high = 1e-2, "
                          "log = true}")
    kind = entry.get("type", base["type"])
    if kind not in _TYPES:
        raise ConfigError(f"{where}: unknown type {kind!r}; use float, int or categorical")
    unknown = set(entry) - {"type", *_TYPES[kind]}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for type {kind}; "
                          f"allowed: type, {', '.join(_TYPES[kind])}")
    spec = {**base, **entry} if kind == base["type"] else {"log": False, "step": None, **entry, "type": kind}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs choices = [a, b, ...] with at least one value")
        return {"type": kind, "choices": choices}
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {bound} must be a number (give low and high when changing the type)")
        if kind == "int" and value != int(value):
            raise ConfigError(f"{where}: {bound} = {value} is not an integer; use type = \"float\" or a whole number")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log")), spec.get("step")
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}; make low <= high")
    if log and low <= 0:
        raise ConfigError(f"{where}: log = true needs low > 0, got low = {low}; raise low or set log = false")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined; drop one of them")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float) or step <= 0):
        raise ConfigError(f"{where}: step must be a number > 0, got {step!r}")
    try:
        out = dist_spec(make_dist({"type": kind, "low": low, "high": high, "log": log, "step": step}))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return out


def apply_overrides(space: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    return {**space, **{k: make_dist(v) for k, v in (overrides or {}).items()}}


def changed_space(effective: Mapping[str, Any], builtin: Mapping[str, Any]) -> dict[str, Any] | None:
    """The effective space's specs when it differs from the built-in one (what keys a cell), else None:
    an unchanged space keeps the cell ids it always had."""
    mine = space_specs(effective)
    return mine if mine != space_specs(builtin) else None


def recipe_point(space: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recipe's values of ``space``'s hyperparameters, or None when it is not a point of the space (an
    override moved a bound past it): a tuned cell then starts from sampled trials only."""
    if not space or not all(k in recipe for k in space):
        return None
    try:
        if not all(dist._contains(dist.to_internal_repr(recipe[k])) for k, dist in space.items()):
            return None
    except (ValueError, TypeError):
        return None
    return {k: recipe[k] for k in space}


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

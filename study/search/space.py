"""The effective search space of a cell: the strategy's space, the ``--config`` overrides, the recipe point.

Search spaces are Optuna distributions; in study.json, ``--print-config`` and cell ids they are
plain specs (:func:`dist_spec`), so a changed space is visible and keys cells of its own. What a
``[search_space.<strategy>]`` table may say is checked here (:func:`resolve_spaces`), with the file and
key named; the TOML itself is read by :mod:`study.config.file`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.config import SPACE_TABLE, StudyConfig
from study.errors import ConfigError
from study.strategies import STRATEGIES, Strategy, get_strategy

_TYPES = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}


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


def search_space(cfg: StudyConfig, strategy: Strategy, builtin: bool = False) -> dict[str, Any]:
    """The strategy's search space with the ``--config`` overrides (not with ``builtin``), and ``freeze_depth``
    capped at ``--max-freeze-depth`` when one is set.

    Why a cap rather than separate spaces: k > 0 puts the backbone into every
    training step (HyperSL per pixel: minutes per epoch on a laptop CPU), so the
    demo/smoke presets search frozen backbones only while a GPU cluster searches
    the strategy's full range; every cell of one study still gets the same space.
    """
    from optuna.distributions import IntDistribution

    space = strategy.load_search_space()
    if not builtin:
        space = apply_overrides(space, cfg.search_spaces.get(strategy.name))
    dist = space.get("freeze_depth")
    cap = cfg.options.max_freeze_depth
    if cap is not None and isinstance(dist, IntDistribution) and dist.high > cap:
        space["freeze_depth"] = IntDistribution(dist.low, max(dist.low, cap), step=dist.step)
    return space

"""Flags -> a StudyConfig: a preset, the settings the user gave, and what ``--protocol paper`` fixes.

The dataclasses themselves (what keys a study and its cells) are in :mod:`study.config.settings`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from study.config.presets import PAPER_EPOCHS, PAPER_FIXED, PRESETS
from study.config.settings import SETTING_GROUPS, StudyConfig
from study.errors import ConfigError
from study.strategies import STRATEGIES


def paper_settings(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The settings ``--protocol paper`` fills in where the user gave none (:data:`PAPER_FIXED`, 500 epochs on
    the full preset); a given one that contradicts the recipe is a deviation (:attr:`StudyConfig.deviations`)."""
    if given.get("trials") not in (None, 1):
        raise ConfigError("--protocol paper searches nothing (each cell trains the published configuration); "
                          "drop --trials, or use the tuned protocol")
    fixed = {k: v for k, v in PAPER_FIXED.items() if given.get(k) is None}
    fixed["trials"] = 1
    if preset == "full" and given.get("epochs") is None:
        fixed["epochs"] = PAPER_EPOCHS
    return fixed


def build_config(preset: str, protocol: str = "tuned", allow_deviations: bool = False, **given: Any) -> StudyConfig:
    """A preset plus the settings the user gave explicitly (flat names; None = not given) -> StudyConfig.

    ``protocol="paper"`` fills in what the published recipe fixes (:data:`PAPER_FIXED`) and refuses anything that
    contradicts it unless ``allow_deviations``; under the tuned protocol a full study on real data
    (``data_root``) defaults to the paper's 500 epochs, with ASHA stopping weak trials.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    given = {k: v for k, v in given.items() if v is not None}
    values = {**PRESETS[preset], **given}
    if protocol == "paper":
        values.update(paper_settings(preset, given))
        values.setdefault("grace_period", 1)
        values["grace_period"] = min(values["grace_period"], values["epochs"])
    elif preset == "full" and given.get("data_root") is not None and "epochs" not in given:
        values["epochs"] = PAPER_EPOCHS
    strategies = values.pop("strategies", None)
    spaces = values.pop("search_spaces", None) or {}
    if "log_to" in values:
        from study.config.file import parse_log_to

        values["log_to"] = parse_log_to(values["log_to"])
    groups: dict[str, dict[str, Any]] = {name: {} for name in SETTING_GROUPS}
    owner = {f.name: name for name, cls in SETTING_GROUPS.items() for f in fields(cls)}
    if isinstance(values.get("dataset"), str):  # the flat name users and presets know
        values["datasets"] = (values.pop("dataset"),)
    elif "dataset" in values:
        values["datasets"] = tuple(values.pop("dataset"))
    for key, value in values.items():
        if key not in owner:
            raise ConfigError(f"unknown study setting {key!r}; valid: {', '.join(sorted(owner))}")
        groups[owner[key]][key] = value
    if strategies is None:
        raise ConfigError("no strategy given; valid: all, " + ", ".join(STRATEGIES))
    built = {name: cls(**groups[name]) for name, cls in SETTING_GROUPS.items()}
    return StudyConfig(strategies=tuple(strategies), preset=preset, protocol=protocol, search_spaces=spaces,
                       allow_deviations=allow_deviations, **built)

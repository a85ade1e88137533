"""Study settings: the StudyConfig dataclasses (what keys a study and its cells) and the TOML study
file (``--config`` / ``--print-config``).

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.config.build import build_config
from study.config.file import SPACE_TABLE, load, parser_defaults, to_toml
from study.config.presets import DEFAULT_SEARCH_BATCH, PRESETS
from study.config.settings import Budget, StudyConfig

__all__ = [
    "Budget",
    "DEFAULT_SEARCH_BATCH",
    "PRESETS",
    "SPACE_TABLE",
    "StudyConfig",
    "build_config",
    "load",
    "parser_defaults",
    "to_toml",
]

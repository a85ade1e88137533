"""``hsistudy``: one console script whose subcommands forward to the ``python -m`` entry points.

Why a thin dispatcher instead of one big argparse tree: every subcommand keeps
its own parser (flags, examples, one-line errors) in its module, so
``hsistudy run --help`` and ``python -m study.run --help`` can never drift apart,
and only the chosen subcommand's module is imported (``hsistudy report`` does
not pay for importing torch and Ray).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

#: subcommand -> (module with ``main(argv) -> int``, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("study.run", "run a data-efficiency study: tune, re-train and test every cell (Ray Tune + Optuna)"),
    "report": ("study.report.cli", "write the self-contained HTML report of one study, or compare several"),
    "prepare": ("study.prepare.cli", "convert downloaded HyKo2 / HSI-Drive / HCV2 releases to HS3-Bench HDF5"),
    "features": ("study.features.cli", "export (and cache) per-pixel HyperSL features of a dataset"),
    "pretrain": ("study.pretrain.cli", "pretrain the small local HyperSL backbone on real spectra"),
    "bench": ("benchmarks.__main__", "run the benchmarks (source checkout only: run it from the repository root)"),
}


def usage() -> str:
    """The top-level help: every subcommand with its one-line description."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return ("usage: hsistudy COMMAND [ARGS...]\n\n"
            "Distributed data-efficiency studies of hyperspectral transfer learning.\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n"
            "`hsistudy COMMAND --help` shows a command's own flags and examples\n"
            "(the same as `python -m <module> --help`).\n"
            "options:\n  -h, --help     show this help\n  -V, --version  show the version (with the git commit "
            "when run from a checkout)\n")


def _benchmarks_importable() -> bool:
    """The benchmarks ship in the source tree only; from its root they are importable like ``python -m``."""
    if importlib.util.find_spec("benchmarks") is not None:
        return True
    here = Path.cwd()
    if (here / "benchmarks" / "__main__.py").is_file():
        sys.path.insert(0, str(here))  # what `python -m benchmarks` gets from the cwd
        importlib.invalidate_caches()
        return importlib.util.find_spec("benchmarks") is not None
    return False


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its module's ``main(argv[1:])``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from study.provenance import code_version

        print(f"hsistudy {code_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hsistudy: unknown command {name!r}; valid commands: {', '.join(COMMANDS)} "
              "(hsistudy --help)", file=sys.stderr)
        return 2
    if name == "bench" and not _benchmarks_importable():
        print("hsistudy bench: the benchmarks are not part of the installed package; run it from a source "
              "checkout's root (git clone ...; cd hsistudy; hsistudy bench) or `python -m benchmarks` there",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m study.features``: the command line lives in :mod:`study.features.cli`."""

import sys

from study.features.cli import main

sys.exit(main())

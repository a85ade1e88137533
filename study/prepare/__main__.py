"""``python -m study.prepare``: the command line lives in :mod:`study.prepare.cli`."""

import sys

from study.prepare.cli import main

sys.exit(main())

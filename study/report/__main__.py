"""``python -m study.report``: the command line lives in :mod:`study.report.cli`."""

import sys

from study.report.cli import main

sys.exit(main())

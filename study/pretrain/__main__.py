"""``python -m study.pretrain``: the command line lives in :mod:`study.pretrain.cli`."""

import sys

from study.pretrain.cli import main

sys.exit(main())

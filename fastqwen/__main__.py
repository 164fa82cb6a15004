"""`python -m fastqwen`: see fastqwen.cli."""

import sys

from fastqwen.cli import main

sys.exit(main())

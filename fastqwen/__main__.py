"""`python -m fastqwen`: see fastqwen.tools.cli."""

import sys

from fastqwen.tools.cli import main

sys.exit(main())

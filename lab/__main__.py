"""`python -m lab` is `ikelab`."""

import sys

from .cli import main

sys.exit(main())

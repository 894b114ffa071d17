"""`python -m lab.agent --config agent_<member>.json [--join]`: one member's agent."""

import sys

from .io.daemon import main

sys.exit(main())

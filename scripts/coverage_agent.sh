#!/usr/bin/env bash
# Branch coverage of lab/agent's pure modules (the protocol and its pure helpers; the shell
# around it is left out, see [tool.coverage.run] in pyproject.toml) by the unit tests and the
# cluster simulator together, which runs inside them. No root needed.
#
#   ./scripts/coverage_agent.sh            prints the table and the total
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .coverage-data && mkdir -p .coverage-data
.venv/bin/coverage run -m pytest -q -p no:cacheprovider tests/unit >/dev/null
.venv/bin/coverage combine -q
.venv/bin/coverage report

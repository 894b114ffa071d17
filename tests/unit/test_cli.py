"""`ikelab` usage errors: one line on stderr, exit status 2, nothing built."""

import pytest

from lab.cli import main


@pytest.mark.parametrize("argv, words", [
    (["run", "--members", "9"], "members must be 1 to 8"),
    (["run", "--members", "three"], "not a whole number"),
    (["run", "--peers", "0"], "peers must be 1 to 128"),
    (["run", "--hash", "l7"], "invalid choice: 'l7'"),
    (["run", "--timeout", "-1"], "between 0 and 3600"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--templates", "/nonexistent"], "no swanctl.conf.j2 there"),
    (["run", "--ownership", "labels"], "invalid choice: 'labels'"),
    (["run", "--expiry", "0"], "between 0 and 3600"),
    (["run", "--dead-after", "0.2"], "dead-after must be 0.3 to 30 seconds"),
    (["run", "--dead-after", "soon"], "not a number of seconds"),
    (["run", "--chaos", "--no-agent"], "--chaos needs the agent"),
    (["run", "--chaos", "--members", "1"], "--chaos needs at least 2 members"),
    ([], "a command is required"),
    (["launch"], "invalid choice: 'launch'"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err
    assert err.count("\n") == 1 and err.startswith("ikelab: error: ")

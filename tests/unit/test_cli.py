"""`ikelab` without root: usage errors (one line on stderr, exit status 2, nothing built),
help that ends with examples, bash completion, and the topology picture."""

import os
import subprocess
import sys

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


@pytest.mark.parametrize("command", [None, "run", "status", "runs", "ladder", "graph", "clean"])
def test_every_help_ends_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main(([command] if command else []) + ["--help"])
    assert exit.value.code == 0
    help_text = capsys.readouterr().out
    examples = help_text.split("examples:\n", 1)
    assert len(examples) == 2, help_text
    assert all(line.strip().startswith("ikelab") for line in examples[1].strip().splitlines())


@pytest.mark.parametrize("line, expected", [("ikelab la", "ladder"),
                                             ("ikelab run --ha", "--hash"),
                                             ("ikelab run --hash s", "split")])
def test_bash_completion_completes_commands_options_and_choices(line, expected, tmp_path):
    """What bash's completion hook asks the installed `ikelab` (argcomplete's protocol)."""
    out = tmp_path / "completions"
    env = dict(os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n", COMP_LINE=line,
               COMP_POINT=str(len(line)), _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    result = subprocess.run([sys.executable, "-m", "lab"], env=env, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert expected in out.read_text().split()


def test_ladder_and_graph_refuse_other_formats_in_one_line(capsys, tmp_path):
    assert main(["ladder", "-o", str(tmp_path / "x.gif")]) == 2
    assert main(["graph", "-o", str(tmp_path / "x.jpg")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("must end in .svg or .png" in line for line in err)


def test_graph_draws_the_plan_without_root(tmp_path, capsys):
    assert main(["graph", "--members", "4", "--peers", "3", "--nat", "-o",
                 str(tmp_path / "g.svg")]) == 0
    svg = (tmp_path / "g.svg").read_text()
    for text in ("m4", "p3", "r1", "NAT router", "bucket 4", "10.255.0.4/24", "203.0.113.1"):
        assert text in svg, text

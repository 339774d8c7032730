"""The README's tour runs as written, top to bottom, from a fresh directory (the service part excepted)."""

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from certify.cli import main

REPO = Path(__file__).resolve().parents[1]


def tour_commands() -> list[list[str]]:
    """The ``lipcert`` commands of the first code block under "## A tour", continuation lines joined."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A tour", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "lipcert":
            commands.append(argv[1:])
    return commands


def test_the_tour_block_is_found():
    names = [c[0] for c in tour_commands()]
    assert names == ["inspect", "bounds", "keygen", "certify", "verify", "policy", "gate", "show"]


@pytest.mark.slow
def test_readme_tour_runs_top_to_bottom(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for argv in tour_commands():
        result = runner.invoke(main, argv)
        assert result.exit_code == 0, (argv, result.output, result.stderr)
    for written in ("key.pem", "key.pub.pem", "report.json", "policy.yaml", "report.html"):
        assert (tmp_path / written).is_file(), written

"""The ``absync`` parser: the listing in absync/cli.py matches the sub-command modules, and a start
imports only the chosen sub-command's module.

The import checks run ``python -c`` in a fresh interpreter (sys.modules of this test process holds
everything already) and read ``sys.modules`` after building the parser.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from absync import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_module_registers_the_name_and_help_the_listing_shows(name: str) -> None:
    parser = argparse.ArgumentParser(prog="absync")
    sub = parser.add_subparsers(dest="command")
    cli.command_module(name).add_parser(sub)
    assert list(sub.choices) == [name]
    listed = {action.dest: action.help for action in sub._choices_actions}
    assert listed == {name: cli.COMMANDS[name][1]}


def test_every_sub_command_module_is_listed() -> None:
    # A sub-command module defines add_parser; the others under absync/commands are its helpers.
    modules = {
        p.stem for p in (REPO / "absync" / "commands").glob("*.py") if "\ndef add_parser(" in p.read_text()
    }
    assert modules == {module for module, _ in cli.COMMANDS.values()}


def loaded_after(*argv: str) -> set[str]:
    code = (
        "import json, sys\n"
        "from absync import cli\n"
        f"cli.build_parser(cli.chosen_command({list(argv)!r}))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(result.stdout))


def test_the_listing_imports_no_sub_command_and_no_heavy_library() -> None:
    loaded = loaded_after("--help")
    assert not {m for m in loaded if m.startswith("absync.commands.")}
    assert not loaded & {"fastapi", "sqlalchemy", "connectors.registry", "absync.web.auth"}


def test_a_sub_command_imports_its_own_module_only() -> None:
    loaded = loaded_after("topics", "list")
    assert {m for m in loaded if m.startswith("absync.commands.")} == {"absync.commands.topics"}
    assert not loaded & {"fastapi", "sqlalchemy", "connectors.registry"}


def test_the_chosen_command_is_the_first_positional_argument() -> None:
    assert cli.chosen_command(["resync", "--destination", "run"]) == "resync"
    assert cli.chosen_command(["--help"]) is None
    assert cli.chosen_command(["-h", "tokens"]) == "tokens"
    assert cli.chosen_command(["no-such-command"]) is None
    assert cli.chosen_command([]) is None

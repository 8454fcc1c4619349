"""Every ``nnunet-pde`` subcommand is documented in docs/cli.md with an example."""

from __future__ import annotations

import argparse

from plan_fixtures import REPO

from nnunet_pde.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = (*prefix, name)
                nested = _commands(sub, path)
                out.extend(nested if nested else [path])
    return out


def test_every_subcommand_has_an_example_in_docs_cli_md():
    text = (REPO / "docs" / "cli.md").read_text()
    commands = _commands(build_parser())
    assert ("derive", "noisy-labels") in commands
    assert ("benchmark", "robustness", "scanner-shift") in commands
    missing = [" ".join(c) for c in commands if f"nnunet-pde {' '.join(c)}" not in text]
    assert not missing, f"docs/cli.md has no example of: {missing}"

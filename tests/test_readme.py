"""The README's commands against the command line they describe: its synopsis names every option each
subcommand has and none it lacks, and every concrete command it shows parses, with its settings valid;
and `--help`, the other place a user reads about them, says what every argument is."""

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from vitlab import cli

README = Path(__file__).resolve().parents[1] / "README.md"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def synopsis() -> dict[str, set[str]]:
    """The options the README's command list gives each subcommand (continuation lines are indented)."""
    block = next(block for block in bash_blocks(README.read_text()) if block.startswith("vitlab train ["))
    options: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        line = line.split("#")[0]
        if line.startswith("vitlab "):
            command = line.split()[1]
        options.setdefault(command, set()).update(OPTION.findall(line))
    return options


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def parser_options() -> dict[str, set[str]]:
    """Each subcommand's long options, less --help and the hidden ones."""
    return {
        name: {
            option
            for action in parser._actions
            if action.help != argparse.SUPPRESS
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        for name, parser in subcommand_parsers().items()
    }


def test_the_readme_synopsis_lists_every_option_of_every_subcommand_and_no_other():
    documented, real = synopsis(), parser_options()
    assert set(documented) == set(real)
    # finetune's line ends in "...train options": it takes the options the two share from train's lines.
    documented["finetune"] |= documented["train"] & real["finetune"]
    for command in real:
        assert documented[command] - real[command] == set(), f"README names options {command} does not have"
        assert real[command] - documented[command] == set(), f"README leaves out options of {command}"


def mentions() -> list[tuple[list[str], bool]]:
    """Every `vitlab ...` command the README shows, as (arguments, whether it stands in a code block)."""
    text = README.read_text()
    blocks = [(line, True) for block in bash_blocks(text) for line in block.splitlines()]
    inline = [(line, False) for line in re.findall(r"`(vitlab [^`]*)`", text)]
    return [
        (line.split("#")[0].split()[1:], in_block) for line, in_block in blocks + inline if line.startswith("vitlab ")
    ]


def concrete(argv: list[str]) -> bool:
    """Written with real values: no placeholders in capitals, no [optional] parts, '|' choices or '...'."""
    return not re.search(r"\b[A-Z]{2,}\b|\[|\||\.\.\.", " ".join(argv))


def test_every_option_the_readme_names_exists_on_its_subcommand():
    real = parser_options()
    named = [(argv[0], option) for argv, _ in mentions() for option in OPTION.findall(" ".join(argv))]
    assert len(named) > 30
    assert [(command, option) for command, option in named if option not in real[command]] == []


def parses(argv: list[str]) -> bool:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            cli.parse_command_line(argv)
    except SystemExit:
        return False
    return True


def whole_commands() -> list[list[str]]:
    """The concrete commands of the code blocks, and those in the prose that are whole commands rather
    than a mention of one (`vitlab train --resume` names an option and leaves out its run)."""
    commands = [argv for argv, in_block in mentions() if concrete(argv) and (in_block or parses(argv))]
    return [list(argv) for argv in dict.fromkeys(map(tuple, commands))]


def test_the_readme_shows_whole_commands_of_several_kinds():
    assert {"train", "compare", "info", "eval", "cache"} <= {argv[0] for argv in whole_commands()}


@pytest.mark.parametrize("argv", whole_commands(), ids=" ".join)
def test_each_concrete_readme_command_parses_and_its_settings_resolve(argv):
    args = cli.parse_command_line(argv)
    if args.command == "train" and not args.resume:
        config, _ = cli._new_run_config(args)
        assert config.train.epochs >= 1
    elif args.command == "compare":
        names, configs = cli.compare_run_configs(args)
        assert len(configs) == len(names) >= 2
    elif args.command == "info":
        assert cli.main(argv) == 0


def test_every_argument_of_every_subcommand_says_what_it_is_in_help():
    silent = [
        (name, action.dest)
        for name, parser in subcommand_parsers().items()
        for action in parser._actions
        if not action.help
    ]
    assert silent == []

"""The ``votemi`` command line: one module per command, the options they share in :mod:`.arguments`.

Each command module has ``add_<name>_command(commands)``, which registers its options, and the function
that runs it; the work itself is done by the engine (:mod:`VoteMILib.run`, :mod:`VoteMILib.bench`,
:mod:`VoteMILib.batch`, ...), which never imports this package. ``python -m VoteMILib.cli`` is the
``votemi`` console script.
"""

from __future__ import annotations

import sys

from .. import __version__, events
from .arguments import Parser
from .batch import add_batch_command
from .bench import add_bench_command
from .describe import add_describe_command
from .evaluate import add_eval_command
from .models import add_models_command
from .select import add_select_command
from .serve import add_serve_command
from .train_encoder import add_train_encoder_command
from .train_selector import add_train_selector_command

#: The commands in the order ``votemi --help`` lists them.
COMMANDS = (add_select_command, add_bench_command, add_batch_command, add_eval_command, add_train_encoder_command,
            add_train_selector_command, add_describe_command, add_models_command, add_serve_command)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with events.session(getattr(args, "events", False)) as state:
        state.exit_code = _run(args)
    return state.exit_code


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:  # VolumeError and OutputError are among them
        events.print_error(error)
        return 1
    except KeyboardInterrupt as interrupt:  # batch and eval say what they kept
        print(str(interrupt) or "votemi: interrupted", file=sys.stderr)
        return 130


def build_parser() -> Parser:
    parser = Parser(
        prog="votemi",
        description="Pick representative slices of a 3D scan with Vote-MI and describe them with a local VLM.")
    parser.add_argument("--version", action="version", version=f"votemi {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser

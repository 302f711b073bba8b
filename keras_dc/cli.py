"""What the programs in tools/ share: running with absl, as `python tools/NAME.py` or as a console script."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags

HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml")
SHARED_FLAG_MODULES = "keras_dc."  # flags a tool declares through a keras_dc module (keras_dc.tool_inputs)


def run(main: Callable[[list[str]], None], module_name: str) -> None:
    """app.run(main) with line-buffered output, and a --help that lists the flags the tool defined
    (module `module_name`) and the shared ones it declared through keras_dc, and exits 0.

    absl's --help lists the flags of the script in sys.argv[0]; a console script is a stub
    that imports the tool's module, so its flags are registered for that module's name too.
    Output is line-buffered so that a log file or a pipe gets each line as it is printed, and a
    killed run loses none.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    for name, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if name == module_name or name.startswith(SHARED_FLAG_MODULES):
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but asking for help is a success: exit status 0 (absl exits 1)."""
    try:
        return app.parse_flags_with_usage(argv)
    except SystemExit as stop:
        if stop.code == 1 and asked_for_help(argv[1:]):
            sys.exit(0)
        raise


def asked_for_help(arguments: Sequence[str]) -> bool:
    """Whether the flags (the arguments before a `--`) include one of absl's help flags."""
    for argument in arguments:
        if argument == "--":
            return False
        name = argument.lstrip("-").split("=", 1)[0]
        if argument.startswith("-") and (name in HELP_FLAGS or name == "?"):
            return True
    return False

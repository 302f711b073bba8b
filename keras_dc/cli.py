"""What the programs in tools/ share: running with absl, as `python tools/NAME.py` or as a console script."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags


def run(main: Callable[[list[str]], None], module_name: str) -> None:
    """app.run(main), with --help listing the flags that module `module_name` defined.

    absl's --help lists the flags of the script in sys.argv[0]; a console script is a stub
    that imports the tool's module, so its flags are registered for that module's name too.
    """
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)

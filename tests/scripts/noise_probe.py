"""Import the real stack (which logs the known harmless lines on a CPU machine), quietly or not.

    python tests/scripts/noise_probe.py quiet|loud          # with or without the filters themselves
    python tests/scripts/noise_probe.py cli [--verbose]     # through the project's CLI entry point
"""
import logging
import sys


def work(argv=()):
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    # any other line of the same loggers must still show
    logging.getLogger("torchao").warning("probe: an unrelated torchao warning")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("probe: an unrelated bitsandbytes warning")
    return 0


if sys.argv[1] == "cli":
    from kitrec_fast.errors import run_cli

    sys.exit(run_cli(work, sys.argv[2:]))
if sys.argv[1] == "quiet":
    from kitrec_fast.quiet import hide_known_noise

    hide_known_noise()
work()

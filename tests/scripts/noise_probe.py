"""Import the real stack (which logs the known harmless lines on a CPU machine), quietly or not.

    python tests/scripts/noise_probe.py quiet|loud
"""
import logging
import sys

if sys.argv[1] == "quiet":
    from kitrec_fast.quiet import hide_known_noise

    hide_known_noise()
import bitsandbytes  # noqa: E402,F401
import peft  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
import trl  # noqa: E402,F401

# any other line of the same loggers must still show
logging.getLogger("torchao").warning("probe: an unrelated torchao warning")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("probe: an unrelated bitsandbytes warning")

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

    import tempfile

    import datasets
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import align_special_tokens

    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.testkit.tiny_model import build_tiny_qwen3

    # what training, export and data preparation do on CPU: a pinned DataLoader, the Trainer's
    # special-token alignment, saving and loading weights, saving a dataset
    next(iter(torch.utils.data.DataLoader([1, 2], pin_memory=True)))
    model = build_tiny_qwen3(num_layers=1)
    model.config.eos_token_id = model.generation_config.eos_token_id = 0
    align_special_tokens(model, load_tokenizer("offline:qwen3"))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        AutoModelForCausalLM.from_pretrained(tmp)
        datasets.Dataset.from_dict({"a": [1, 2]}).save_to_disk(tmp + "/ds")
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

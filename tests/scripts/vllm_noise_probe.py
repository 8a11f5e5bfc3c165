"""What a command that starts vLLM shows of vLLM's logging, quietly or with ``--verbose``.

    python tests/scripts/vllm_noise_probe.py [--verbose]

Laid out as the ``kitrec-fast`` console script is (kitrec_fast imported at the top, the command
under the main guard), because vLLM's engine process is a spawned child that imports the parent's
main module again. The command imports vLLM as ``--engine vllm`` does, applies vLLM's logging
configuration as its engine does, and starts a spawned child as vLLM starts its engine core; the
child applies the configuration it is handed, logs through vLLM's loggers, and imports torchao
(which logs the known ``_pytree`` and torchao lines on a CPU machine).
"""
import multiprocessing
import sys

from kitrec_fast.errors import run_cli


def engine_core(logging_config) -> None:
    from vllm.logger import configure_logging, init_logger

    configure_logging(logging_config)
    log = init_logger("vllm.v1.engine.core")
    log.info("probe: an engine info line")
    log.warning("probe: an engine warning")
    import torchao  # noqa: F401


def work(argv) -> int:
    from kitrec_fast.eval.generate.vllm_check import import_vllm

    import_vllm()
    from vllm.config import LoggingConfig
    from vllm.logger import configure_logging, init_logger

    config = LoggingConfig()  # as vLLM's engine arguments build it
    configure_logging(config)
    init_logger("vllm.entrypoints.llm").info("probe: a parent info line")
    child = multiprocessing.get_context("spawn").Process(target=engine_core, args=(config,))
    child.start()
    child.join()
    return child.exitcode


if __name__ == "__main__":
    sys.exit(run_cli(work, sys.argv[1:]))

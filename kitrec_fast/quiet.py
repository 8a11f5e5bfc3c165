"""Known harmless upstream log lines, hidden from the project's commands unless ``--verbose``.

Each entry is a logger name and a piece of the message, so only that exact line goes; anything
else those libraries log still shows. Why each is harmless:

* torch ``_pytree``: a deprecation notice about how a dependency registers an Enum with pytree;
  nothing the run does depends on it.
* bitsandbytes CPU ops: the optional ``kernels`` package for a faster CPU 4-bit matmul is absent;
  bitsandbytes uses its own CPU kernel, and GPU runs never take this path.
* Unsloth "Could not build the patched trl.trainer...": an Unsloth import that tries to generate
  its ``UnslothSFTTrainer`` where it cannot says so, and the run trains on the ``SFTTrainer`` that
  is left. With the pinned Unsloth a machine without CUDA never tries: Unsloth's CPU backend makes
  ``trl.SFTTrainer`` unsloth_zoo's CPU subclass of TRL's own, and kitrec_fast's trainer subclasses
  that (environment.json ``trainer_bases`` records which). A GPU run's generated class is trained
  on CPU against it by tests/test_trainer_class.py: same losses and gradients; only TRL's bf16 cast
  of a 4-bit model's LoRA weights is skipped there (they train in fp32). With a CUDA device the
  line is NOT hidden: there it means Unsloth's trainer patches are missing.
* torchao ``Failed to load ..._C.so``: torchao's optional compiled ops do not match the installed
  torch; nothing in kitrec_fast uses torchao.
* transformers "The tokenizer has new PAD/BOS/EOS tokens ...": the Trainer copies the tokenizer's
  special-token ids into the model's config (each data-parallel process says so, hence twice under
  torchrun). kitrec_fast's collator pads and its generation stops with the tokenizer's ids given
  explicitly, so the copy changes nothing it does; the adapter does not carry the model config.
* torch "'pin_memory' argument is set as true but no accelerator is found": the Trainer's
  DataLoader asks for pinned memory, which only speeds up copies to a GPU; on a CPU-only run there
  is no copy to speed up (with a GPU the warning does not arise).
* vLLM "Triton is installed, but doesn't include CPU backend": vLLM's CPU build looks for Triton's
  CPU backend, which the Triton wheel (a requirement of Unsloth, built for GPUs) lacks; vLLM then
  runs its own compiled CPU kernels, as on any CPU machine. A GPU build of vLLM never says it.
* vLLM's own INFO lines (engine configuration, backend choices, timings: ~60 lines per engine
  start): its warnings and errors still show. Set through vLLM's ``VLLM_LOGGING_LEVEL`` (a value
  the user exported wins).
* Progress bars "Loading weights" and "Writing model shards" (transformers) and "Saving the dataset"
  (datasets): each command prints its own line once the model is loaded or the data saved; the
  bars would be drawn into logs as carriage-return noise. Hub download bars are not touched.

vLLM runs its engine in spawned processes, which the filters installed here do not reach: the
environment does. Before vLLM is imported, :func:`pass_to_children` sets ``QUIET_ENV``, which makes
a child process install the same filters when it imports kitrec_fast (a spawned child imports its
parent's main module, hence kitrec_fast, before anything of vLLM), and vLLM's log level. Under
``python -m kitrec_fast`` that holds because ``kitrec_fast/__main__.py`` presents itself by its path
(multiprocessing does not re-run a package ``__main__`` known by name).
"""

from __future__ import annotations

import logging
import os

KNOWN_NOISE = (
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("unsloth_zoo.log", "Could not build the patched trl.trainer."),
    ("torchao", "Failed to load "),
    ("transformers.trainer_utils", "The tokenizer has new PAD/BOS/EOS tokens"),
    ("vllm.triton_utils.importing", "Triton is installed, but doesn't include CPU backend"),
)
# Python warnings (message start) and tqdm bars (description start) hidden likewise.
KNOWN_WARNINGS = ("'pin_memory' argument is set as true but no accelerator is found",)
KNOWN_BARS = ("Loading weights", "Writing model shards", "Saving the dataset")
QUIET_ENV = "KITREC_FAST_QUIET"
VLLM_LEVEL = ("VLLM_LOGGING_LEVEL", "WARNING")


def _cuda_present() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


class _DropLine(logging.Filter):
    def __init__(self, text: str, only_without_cuda: bool = False):
        super().__init__()
        self.text, self.only_without_cuda = text, only_without_cuda

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        return self.only_without_cuda and _cuda_present()


_installed = False


def hide_known_noise() -> None:
    """Install the filters (idempotent); call before the libraries are imported."""
    global _installed
    if _installed:
        return
    import re
    import warnings

    for name, text in KNOWN_NOISE:
        logging.getLogger(name).addFilter(_DropLine(text, only_without_cuda=name == "unsloth_zoo.log"))
    for text in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text))
    _hide_bars(KNOWN_BARS)
    _installed = True


def pass_to_children() -> None:
    """If this process hides the known lines, the processes it starts from now on hide them too
    (and vLLM's INFO lines); a ``--verbose`` command leaves the environment as it is."""
    if _installed:
        os.environ[QUIET_ENV] = "1"
        os.environ.setdefault(*VLLM_LEVEL)


def _hide_bars(descriptions: tuple[str, ...]) -> None:
    """tqdm bars whose description starts with one of ``descriptions`` are created disabled.

    tqdm itself is patched (not transformers or datasets): importing those before unsloth would
    break the fast path's import order, and every bar named here goes through tqdm's constructor."""
    from tqdm import std

    original = std.tqdm.__init__

    def __init__(self, *args, **kwargs):
        if str(kwargs.get("desc") or "").startswith(descriptions):
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = __init__

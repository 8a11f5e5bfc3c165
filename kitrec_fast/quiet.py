"""Known harmless upstream log lines, hidden from the project's commands unless ``--verbose``.

Each entry is a logger name and a piece of the message, so only that exact line goes; anything
else those libraries log still shows. Why each is harmless:

* torch ``_pytree``: a deprecation notice about how a dependency registers an Enum with pytree;
  nothing the run does depends on it.
* bitsandbytes CPU ops: the optional ``kernels`` package for a faster CPU 4-bit matmul is absent;
  bitsandbytes uses its own CPU kernel, and GPU runs never take this path.
* Unsloth "Could not build the patched trl.trainer...": on a machine without CUDA, Unsloth cannot
  generate its patched trainer and TRL's own is used. kitrec_fast brings its own loss, collator
  and dataset preparation either way. With a CUDA device the line is NOT hidden: there it means
  Unsloth's trainer patches are missing.
* torchao ``Failed to load ..._C.so``: torchao's optional compiled ops do not match the installed
  torch; nothing in kitrec_fast uses torchao.
"""

from __future__ import annotations

import logging

KNOWN_NOISE = (
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("unsloth_zoo.log", "Could not build the patched trl.trainer."),
    ("torchao", "Failed to load "),
)


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
    for name, text in KNOWN_NOISE:
        logging.getLogger(name).addFilter(_DropLine(text, only_without_cuda=name == "unsloth_zoo.log"))
    _installed = True

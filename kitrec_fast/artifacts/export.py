"""Merge a run's LoRA adapter into 16-bit base weights.

QLoRA trains against 4-bit weights, but merging the adapter straight into those 4-bit blocks
re-quantizes the sum and loses most of the fine-tune (the LoRA delta is far below the nf4 step).
So the base is loaded in 16 bits (a pre-quantized checkpoint is dequantized), each delta
``scale * B @ A`` is added in float32, and only the sum is cast to the output dtype.
"""

from __future__ import annotations

import re
from pathlib import Path

from kitrec_fast.artifacts.diskspace import check_export_space
from kitrec_fast.errors import UserError
from kitrec_fast.fsio import atomic_write_json, atomic_write_text, make_shareable

_PREQUANT = re.compile(r"(-unsloth)?-bnb-4bit$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
# the base an export loads: --base-model, else the weights the run trained on
_BASE_OPTION = "--base-model (default: the run's weights)"


class ExportError(UserError):
    """An export that cannot be written as asked (no finished run, an output folder in use)."""


def check_output(run_dir: Path, out_dir: Path) -> None:
    """The merged model gets a folder of its own: written into the run directory it would replace
    the run's README.md (and more); into a folder that holds files, it would mix two models."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or run in out.parents:
        raise ExportError(f"--merged-16bit: {out_dir} is inside the run directory {run_dir}; "
                          "give a folder of its own (e.g. merged/)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--merged-16bit: {out_dir} exists and is not an empty folder; give a new or empty one")


def base_for_merge(weights: str) -> str:
    """The 16-bit checkpoint behind a run's weights (pre-quantized 4-bit ids map to their origin)."""
    return _PREQUANT.sub("", weights)


def merge_lora_fp32(peft_model) -> tuple[int, int]:
    """Fold every LoRA adapter into its base Linear in float32; returns (LoRA modules merged,
    decoder layers they sit in)."""
    import torch
    from peft.tuners.lora import LoraLayer

    merged, layers = 0, set()
    with torch.no_grad():
        for path, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            base = module.get_base_layer()
            weight = base.weight
            total = weight.data.float()
            for name in module.active_adapters:
                if name not in module.lora_A:
                    continue
                a = module.lora_A[name].weight.float()
                b = module.lora_B[name].weight.float()
                delta = (b @ a) * module.scaling[name]
                total += delta.T if getattr(module, "fan_in_fan_out", False) else delta
            weight.data.copy_(total.to(weight.dtype))
            merged += 1
            layer = _LAYER.search(f".{path}.")
            layers.add(layer.group(1) if layer else path)
    return merged, len(layers)


def base_parameters(base_model: str) -> int:
    """Parameters of the merged model, counted on the meta device (no weights read): what an export
    writes is known before minutes of loading."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from kitrec_fast.hub import hub_errors, require_hub

    require_hub(base_model, "model", _BASE_OPTION)
    with hub_errors(base_model, "model", _BASE_OPTION), init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model))
    return sum(p.numel() for p in model.parameters())


def export_merged(run_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16",
                  base_model: str | None = None) -> Path:
    """Write base + adapter merged into ``out_dir`` as a plain transformers checkpoint."""
    import json

    from kitrec_fast.artifacts import rundir
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.hub import hub_errors, require_hub

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    adapter = run_dir / rundir.ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json (is {run_dir} a finished run?)")
    check_output(run_dir, out_dir)
    env_path = run_dir / rundir.ENVIRONMENT
    weights = json.loads(env_path.read_text()).get("weights") if env_path.is_file() else None
    if base_model is None:
        cfg = rundir.read_resolved_config(run_dir)
        base_model = base_for_merge(weights or resolve_model_path(cfg.model.name))
    require_hub(base_model, "model", _BASE_OPTION)  # before the imports below take their seconds
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    check_export_space(base_parameters(base_model), torch.tensor([], dtype=torch_dtype).element_size(), out_dir)
    # Load the base in float32 layer storage only where it is cheap; otherwise in the output dtype
    # and merge each layer in float32 (merge_lora_fp32), which bounds the extra memory to one layer.
    with hub_errors(base_model, "model", _BASE_OPTION):
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch_dtype, low_cpu_mem_usage=True)
    model = PeftModel.from_pretrained(model, str(adapter))
    n, layers = merge_lora_fp32(model)
    if n == 0:
        raise RuntimeError(f"{adapter}: no LoRA layers found to merge")
    model = model.unload()  # drop the LoRA modules, keeping the merged base weights
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(out_dir))
    info = {"run_dir": str(run_dir), "base_model": base_model, "dtype": dtype, "merged_modules": n,
            "merged_layers": layers}
    atomic_write_json(out_dir / "kitrec_export.json", info)
    write_merged_card(out_dir, run_dir, info)
    make_shareable(out_dir)
    return out_dir


def write_merged_card(out_dir: Path, run_dir: Path, info: dict) -> None:
    """README.md of the merged model: the run's card with the merge facts in front."""
    import json

    from kitrec_fast.artifacts import rundir
    from kitrec_fast.artifacts.model_card import render_merged_card

    cfg = rundir.read_resolved_config(run_dir)
    summary_path, env_path = run_dir / rundir.SUMMARY, run_dir / rundir.ENVIRONMENT
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    atomic_write_text(out_dir / "README.md", render_merged_card(cfg, summary, env, info))

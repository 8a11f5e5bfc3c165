"""The model card (README.md) written next to a run's adapter, and the one of a merged export.

The metadata block is built with ``huggingface_hub``'s ``ModelCardData`` (base model, datasets,
library, tags, and the best eval loss as a structured ``model-index`` result), so the Hub shows the
base-model link, the dataset and the result the way it does for its own cards.
"""

from __future__ import annotations

from pathlib import Path

from kitrec_fast.fsio import atomic_write_text

_HUB_DATASET_PREFIX = "Younggooo/"


def card_metadata(cfg, summary: dict, library: str, extra_tags: tuple[str, ...] = ()) -> str:
    """The ``---`` YAML block of a card, as huggingface_hub writes it."""
    from huggingface_hub import EvalResult, ModelCardData

    base = summary.get("base_model") or summary.get("weights") or cfg.model.name
    dataset = cfg.data.dataset
    hub_dataset = dataset if "/" in dataset and not dataset.startswith(("embedded:", "/", ".")) else None
    best = summary.get("best_eval_loss")
    results = None
    if best is not None and hub_dataset:
        results = [EvalResult(task_type="text-generation", dataset_type=hub_dataset, dataset_name=hub_dataset,
                              dataset_split="validation (held-out 10% of train, stratified by user type)",
                              metric_type="loss", metric_name="eval_loss (label-smoothed)",
                              metric_value=round(float(best), 4))]
    tags = ["kitrec", "recommendation", "cross-domain", "qlora",
            "unsloth" if cfg.backend == "unsloth" else "peft", *extra_tags]
    if cfg.smoke:
        tags.append("smoke-test")
    data = ModelCardData(base_model=base, datasets=[hub_dataset] if hub_dataset else None, library_name=library,
                         tags=tags, pipeline_tag="text-generation", model_name=cfg.recipe, eval_results=results)
    return f"---\n{data.to_yaml()}\n---\n"


def render_model_card(cfg, summary: dict, env: dict) -> str:
    t, lo, d = cfg.train, cfg.lora, cfg.data
    best = summary.get("best_eval_loss")
    lines = [
        card_metadata(cfg, summary, "peft"),
        f"# {cfg.recipe}: KitREC LoRA adapter",
        "",
        f"A QLoRA adapter for `{cfg.model.name}` trained with kitrec_fast (`{cfg.backend}` backend) on "
        f"`{d.dataset}`.",
        "",
    ]
    status = summary.get("status", "finished")
    if status == "aborted":  # a second Ctrl-C: the steps after the newest checkpoint are lost
        newest = summary.get("newest_checkpoint")
        lines += [f"> **Aborted** at step {summary.get('global_step', '?')} of {summary.get('max_steps', '?')} "
                  "without saving: not a finished model. Rerun the training command to resume from "
                  + (f"{newest}." if newest else "the start (no checkpoint was written)."), ""]
    elif status != "finished":
        lines += [f"> **{status.capitalize()}** at step {summary.get('global_step', '?')} of "
                  f"{summary.get('max_steps', '?')}: not a finished model. Rerun the training command to "
                  "resume from the newest checkpoint.", ""]
    if cfg.smoke:
        data = ("embedded synthetic data" if d.dataset.startswith("embedded:") else f"`{d.dataset}`")
        lines += [f"> **Smoke run**: tiny random model trained a few steps on {data}. Not a usable model.", ""]
    for warning in summary.get("warnings", []):
        lines += [f"> **Note**: {warning}", ""]
    lines += [
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| weights loaded | `{summary.get('weights', '?')}` ({'4-bit ' + cfg.model.quant_type if cfg.model.load_in_4bit else '16-bit'}) |",
        f"| LoRA | r {lo.r}, alpha {lo.alpha}, dropout {lo.dropout}, {', '.join(lo.target_modules)} |",
        f"| batch | {t.per_device_batch_size} x {t.gradient_accumulation_steps}"
        + (f" on each of {t.world_size} data-parallel processes" if t.world_size > 1 else "")
        + f" (effective {t.effective_batch_size}) |",
        f"| world size | {t.world_size} ({'data parallel' if t.world_size > 1 else 'one process'}) |",
        f"| learning rate | {t.learning_rate} {t.lr_scheduler}, warmup ratio {t.warmup_ratio} |",
        f"| label smoothing / NEFTune | {t.label_smoothing} / {t.neftune_alpha} |",
        f"| max length / candidates | {d.max_length} tokens / {d.max_candidates} |",
        "| candidates kept in the cut | " + ("ground truth, then the candidates the target cites "
                                          "(`data.keep_cited_candidates=true`) |" if d.keep_cited_candidates else
                                          "ground truth only, as published (`data.keep_cited_candidates=false`) |"),
        f"| steps | {summary.get('global_step', '?')} |",
        f"| best eval_loss (smoothed) | {best:.4f} |" if best is not None else "| best eval_loss | n/a |",
        f"| best checkpoint | {summary.get('best_checkpoint') or 'n/a'} |",
        "",
        "`eval_loss` includes the label-smoothing term, as the published KitREC numbers do; "
        "`eval_nll` in `metrics.jsonl` is the plain cross-entropy.",
        "",
        "## Environment",
        "",
        f"GPU: {(env.get('gpu') or {}).get('name', 'none (CPU)')}; git commit {env.get('git_commit')}; "
        + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v),
        "",
        "## Use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        f"model = AutoPeftModelForCausalLM.from_pretrained('{summary.get('adapter_dir', 'adapter')}')",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: Path, cfg, summary: dict, env: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, render_model_card(cfg, summary, env))
    return path


def render_merged_card(cfg, summary: dict, env: dict, info: dict) -> str:
    """The card of a merged 16-bit export: what was merged into what, then the run's own card."""
    body = render_model_card(cfg, {**summary, "adapter_dir": "."}, env)
    # the run card without its front matter and its adapter-loading snippet
    body = body.split("---", 2)[2].split("## Use", 1)[0].rstrip() + "\n"
    head = [
        card_metadata(cfg, {**summary, "base_model": info["base_model"]}, "transformers", ("merged",)),
        f"# {cfg.recipe}: KitREC model (LoRA merged into {info['dtype']} weights)",
        "",
        f"`{info['base_model']}` with the run's LoRA adapter added in float32 to {info['merged_modules']} "
        f"modules in {info['merged_layers']} layers, "
        f"written as {info['dtype']}. Load it as a plain transformers model:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('.')",
        "```",
        "",
        "The adapter's training record follows.",
    ]
    return "\n".join(head) + body.replace("# " + cfg.recipe + ": KitREC LoRA adapter", "## Adapter", 1)

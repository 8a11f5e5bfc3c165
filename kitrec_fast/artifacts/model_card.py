"""The model card (README.md) written next to a run's adapter."""

from __future__ import annotations

from pathlib import Path


def render_model_card(cfg, summary: dict, env: dict) -> str:
    t, lo, d = cfg.train, cfg.lora, cfg.data
    best = summary.get("best_eval_loss")
    lines = [
        "---",
        f"base_model: {summary.get('weights', cfg.model.name)}",
        "library_name: peft",
        "tags: [kitrec, recommendation, qlora, " + ("unsloth" if cfg.backend == "unsloth" else "peft") + "]",
        "---",
        "",
        f"# {cfg.recipe}: KitREC LoRA adapter",
        "",
        f"A QLoRA adapter for `{cfg.model.name}` trained with kitrec_fast (`{cfg.backend}` backend) on "
        f"`{d.dataset}`.",
        "",
    ]
    if cfg.smoke:
        lines += ["> **Smoke run**: tiny random model and embedded synthetic data. Not a usable model.", ""]
    for warning in summary.get("warnings", []):
        lines += [f"> **Note**: {warning}", ""]
    lines += [
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| weights loaded | `{summary.get('weights', '?')}` ({'4-bit ' + cfg.model.quant_type if cfg.model.load_in_4bit else '16-bit'}) |",
        f"| LoRA | r {lo.r}, alpha {lo.alpha}, dropout {lo.dropout}, {', '.join(lo.target_modules)} |",
        f"| batch | {t.per_device_batch_size} x {t.gradient_accumulation_steps} (effective {t.effective_batch_size}) |",
        f"| learning rate | {t.learning_rate} {t.lr_scheduler}, warmup ratio {t.warmup_ratio} |",
        f"| label smoothing / NEFTune | {t.label_smoothing} / {t.neftune_alpha} |",
        f"| max length / candidates | {d.max_length} tokens / {d.max_candidates} |",
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
    path.write_text(render_model_card(cfg, summary, env))
    return path

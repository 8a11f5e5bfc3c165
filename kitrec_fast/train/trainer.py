"""TRL SFTTrainer on the project's pre-tokenized rows, with the chunked label-smoothed loss.

Imports of trl/transformers happen inside functions: on the fast path the unsloth backend must be
imported first (it patches both), so this module may be imported at any time.
"""

from __future__ import annotations

from pathlib import Path

from kitrec_fast.config import RunConfig
from kitrec_fast.train.collator import KitrecCollator


def loss_path(cfg: RunConfig, on_cuda: bool) -> str:
    """'chunked' (the project's smoothed loss) or 'library' (the backend's own fused loss)."""
    if cfg.train.loss != "auto":
        return cfg.train.loss
    if cfg.train.label_smoothing > 0:
        return "chunked"
    # TRL's own fused loss is a Triton kernel with no CPU path; Unsloth's CPU fallback is plain.
    return "library" if (on_cuda or cfg.backend == "unsloth") else "chunked"


def build_sft_config(cfg: RunConfig, output_dir: str, has_eval: bool, bf16: bool, fp16: bool):
    from trl import SFTConfig

    from kitrec_fast.train.tracking import PROJECT

    t = cfg.train
    return SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        optim=t.optim,
        max_grad_norm=t.max_grad_norm,
        # The loss applies smoothing itself; a Trainer-side smoother would build full logits.
        label_smoothing_factor=0.0,
        neftune_noise_alpha=t.neftune_alpha,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        seed=t.seed,
        data_seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        # Checkpointing is set up by the backend (Unsloth's own or peft's non-reentrant one).
        gradient_checkpointing=False,
        bf16=bf16,
        fp16=fp16,
        # Trackers: files under the run directory unless set elsewhere (kitrec_fast/train/tracking.py).
        report_to=cfg.train.report_to,
        run_name=Path(output_dir).name,
        project=PROJECT,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        padding_free=False,
        dataloader_num_workers=0,
        save_only_model=False,
        disable_tqdm=True,
    )


def _decoder_and_head(model):
    """The causal LM's decoder stack and LM head under any peft wrapping."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head


def make_trainer(cfg: RunConfig, model, tokenizer, train_ds, eval_ds, output_dir: str, callbacks: list):
    import torch
    from trl import SFTTrainer

    from kitrec_fast.train.loss import causal_lm_loss

    from kitrec_fast.backends.common import resolve_dtype

    on_cuda = torch.cuda.is_available()
    dtype = resolve_dtype(cfg.model.compute_dtype)
    bf16, fp16 = on_cuda and dtype == torch.bfloat16, on_cuda and dtype == torch.float16
    args = build_sft_config(cfg, output_dir, has_eval=eval_ds is not None and len(eval_ds) > 0, bf16=bf16, fp16=fp16)
    path = loss_path(cfg, on_cuda)
    eps = cfg.train.label_smoothing
    chunk = cfg.train.loss_chunk_size

    class KitrecSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is computed from hidden states in chunks (no full logits).

        The smoothed objective is ``loss``/``eval_loss`` (comparable with the published eval loss,
        which the original Trainer reported with its smoothing); the plain cross-entropy over the
        same tokens is logged as ``nll``/``eval_nll``.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            labels = inputs["labels"]
            if path == "library":
                out = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
                loss, nll = out.loss, out.loss.detach()
            else:
                decoder, head = _decoder_and_head(model)
                model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
                hidden = decoder(**model_inputs, use_cache=False).last_hidden_state
                loss, nll = causal_lm_loss(hidden, head.weight, labels, label_smoothing=eps,
                                           num_items_in_batch=num_items_in_batch, chunk_size=chunk,
                                           lm_head_bias=getattr(head, "bias", None))
                if num_items_in_batch is not None:
                    # Log nll per token of this micro-batch, not its share of the accumulated batch.
                    n_here = int((labels[..., 1:] != -100).sum())
                    nll = nll * (float(num_items_in_batch) / max(n_here, 1))
            self._metrics[mode]["nll"].append(float(nll))
            if mode == "train":
                self._total_train_tokens += int(inputs["input_ids"].numel() if "attention_mask" not in inputs
                                                else inputs["attention_mask"].sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            if return_outputs:
                return loss, {"loss": loss}
            return loss

        def log(self, logs, *args, **kwargs):
            # Into the Trainer's own log event, so every report_to tracker receives them too.
            super().log(self.kitrec_metrics.add_to(logs), *args, **kwargs)

    trainer = KitrecSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        data_collator=KitrecCollator(pad_token_id=tokenizer.pad_token_id, padding_free=cfg.train.padding_free),
        callbacks=callbacks,
    )
    # The rich progress bar and metrics.jsonl replace the Trainer's raw dict printing.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    from kitrec_fast.train.tracking import ProjectMetrics

    trainer.kitrec_metrics = ProjectMetrics(lambda: trainer._total_train_tokens)
    trainer.add_callback(trainer.kitrec_metrics)
    # The loss is already normalised by the accumulated token count; stop the Trainer from also
    # dividing by the number of accumulation steps.
    trainer.model_accepts_loss_kwargs = True
    trainer.kitrec_loss_path = path
    return trainer

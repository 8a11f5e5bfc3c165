"""TRL SFTTrainer on the project's pre-tokenized rows, with the chunked label-smoothed loss.

Imports of trl/transformers happen inside functions: on the fast path the unsloth backend must be
imported first (it patches both), so this module may be imported at any time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kitrec_fast.config import RunConfig
from kitrec_fast.train.collator import KitrecCollator


# In each checkpoint: the sum of the per-step training losses of every step up to it. The Trainer's
# train_loss divides the loss sum of the steps this attempt ran by all steps, so after a resume it
# would count the earlier attempts' steps as zero.
LOSS_SUM_FILE = "kitrec_loss_sum.json"


def read_loss_sum(checkpoint) -> float:
    """The loss sum stored in ``checkpoint`` (0.0 when training starts fresh)."""
    import json

    if not checkpoint:
        return 0.0
    try:
        return float(json.loads((Path(checkpoint) / LOSS_SUM_FILE).read_text())["loss_sum"])
    except (OSError, ValueError, KeyError):
        return 0.0  # a checkpoint written before this file existed: train_loss counts this attempt only


def loss_path(cfg: RunConfig, on_cuda: bool) -> str:
    """'chunked' (the project's smoothed loss) or 'library' (the backend's own fused loss)."""
    if cfg.train.loss != "auto":
        return cfg.train.loss
    if cfg.train.label_smoothing > 0:
        return "chunked"
    # TRL's own fused loss is a Triton kernel with no CPU path; Unsloth's CPU fallback is plain.
    return "library" if (on_cuda or cfg.backend == "unsloth") else "chunked"


def build_sft_config(cfg: RunConfig, output_dir: str, has_eval: bool, bf16: bool, fp16: bool,
                     extra: dict | None = None):
    """The SFTConfig of a run; ``extra`` adds TrainingArguments (e.g. ``use_cpu``) or overrides one."""
    from trl import SFTConfig

    from kitrec_fast.train.tracking import PROJECT

    t = cfg.train
    kwargs = dict(
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
    kwargs.update(extra or {})
    return SFTConfig(**kwargs)


def _causal_lm(model):
    """The causal LM (the module holding ``model`` and ``lm_head``) under any peft/DDP/compile wrapping."""
    from accelerate.utils import extract_model_from_parallel

    base = extract_model_from_parallel(model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def _decoder_and_head(model):
    """The causal LM's decoder stack and LM head under any peft/DDP/compile wrapping."""
    base = _causal_lm(model)
    return base.model, base.lm_head


@contextlib.contextmanager
def lm_head_skipped(model):
    """Swap the LM head for a stub for one forward: the chunked loss multiplies by the real head's
    weight itself, so the forward must not.

    Why: the stock transformers forward runs the head even with ``logits_to_keep=1``
    (``transformers/models/qwen3/modeling_qwen3.py:495``, ``self.lm_head(hidden_states[:, slice, :])``),
    and under bf16 autocast the baseline's fp32 head (``prepare_model_for_kbit_training`` upcasts every
    non-quantized weight, ``peft/utils/other.py:205-208``)
    is cast to bf16 on every forward: a 1.56 GB transient for Qwen3-14B that the fast path never
    pays, which would flatter its peak memory. Unsloth's fast forward reads the head's weight (dtype,
    device: ``unsloth/models/llama.py:2053-2056``) and returns before using it under
    ``UNSLOTH_RETURN_HIDDEN_STATES`` (line 2070), so the stub keeps the weight reachable.
    """
    import torch

    class _Stub(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            # plain attributes, not registered: the real head keeps owning them
            self.__dict__["weight"], self.__dict__["bias"] = head.weight, getattr(head, "bias", None)

        def forward(self, hidden):
            # No logits (nobody reads them), but a zero-width view of the input rather than a new
            # tensor: the output stays in the autograd graph, which DDP needs to tie the loss's
            # backward to this forward (with reentrant checkpointing, a detached output makes its
            # reducer see the LoRA weights' hooks fire twice).
            return hidden[..., :0]

    base = _causal_lm(model)
    head = base.lm_head
    base.lm_head = _Stub(head)
    try:
        yield
    finally:
        base.lm_head = head


# Unsloth's fast CausalLM forward returns the final hidden states (as ``.logits``) instead of
# running the LM head when this is "1" (unsloth/models/llama.py, ``_CausalLM_fast_forward``); it
# also makes the final norm keep its own output buffer, as the caller now owns that tensor. Stock
# transformers forwards ignore it.
_UNSLOTH_HIDDEN = "UNSLOTH_RETURN_HIDDEN_STATES"


@contextlib.contextmanager
def final_hidden_states(model):
    """Capture the decoder's final (normed) hidden states during one forward of the top-level model.

    Why the top-level forward and not the decoder directly: accelerate applies mixed-precision
    autocast by wrapping only the prepared model's ``forward``, and DistributedDataParallel
    synchronises gradients only for work done through its own ``forward``; calling the inner
    decoder skips both (the baseline then trains in fp32). Why a forward hook on the decoder: it
    sees exactly the tensor the LM head would consume, on both the stock transformers forward and
    Unsloth's fast one, without changing the model. The caller passes ``logits_to_keep=1`` so the
    stock forward runs the head on one position only ([B, 1, V] instead of [B, T, V]); on
    Unsloth's forward the environment switch above skips the head entirely. (Returning the states
    through ``output_hidden_states`` instead would have accelerate convert every layer's output to
    fp32 on the way out.)
    """
    decoder, _ = _decoder_and_head(model)
    box: dict = {}

    def hook(module, args, output):
        import torch

        hidden = box["hidden"] = output[0]  # BaseModelOutputWithPast or a tuple: last_hidden_state first
        # What the run really computes in: autocast (if any) as the decoder ran, and the dtype of the
        # states it handed on (the residual stream: fp32 when the norms/embeddings were upcast).
        box["autocast"] = torch.is_autocast_enabled(hidden.device.type)
        box["autocast_dtype"] = str(torch.get_autocast_dtype(hidden.device.type)).replace("torch.", "")
        box["hidden_dtype"] = str(hidden.dtype).replace("torch.", "")

    handle = decoder.register_forward_hook(hook)
    prior = os.environ.get(_UNSLOTH_HIDDEN)
    os.environ[_UNSLOTH_HIDDEN] = "1"
    try:
        yield box
    finally:
        handle.remove()
        if prior is None:
            os.environ.pop(_UNSLOTH_HIDDEN, None)
        else:
            os.environ[_UNSLOTH_HIDDEN] = prior


def data_parallel_loss_scale(trainer, num_items_in_batch) -> int:
    """The factor Trainer.compute_loss multiplies the loss by under data parallelism (transformers 5.17).

    With ``average_tokens_across_devices`` the Trainer gathers ``num_items_in_batch`` over all ranks,
    so each rank's loss is its token sum over the *global* count; DDP then averages gradients over
    ranks, which would divide by the world size once more. The Trainer undoes that by multiplying by
    the number of processes, and so must a ``compute_loss`` that replaces it. 1 on a single process.
    """
    args = trainer.args
    if not args.average_tokens_across_devices or num_items_in_batch is None:
        return 1
    scale = trainer.accelerator.num_processes
    pc = getattr(trainer.accelerator, "parallelism_config", None)
    if pc is not None:
        scale //= pc.tp_size
    return scale if args.n_gpu <= 1 else args.n_gpu


def data_parallel_args(cfg: RunConfig, on_cuda: bool, world: int) -> dict:
    """TrainingArguments for a data-parallel launch (``world`` > 1 processes); empty for one process.

    On CPU ``use_cpu`` makes accelerate form a gloo process group (without it the ranks would not
    know each other and each would train on all the data). On the peft baseline every LoRA weight
    gets a gradient every step, so DDP need not search for unused parameters (the Trainer would turn
    that search on for any PeftModel, at the cost of a graph traversal per step); Unsloth installs
    its own choice (``unsloth/models/_ddp_defaults.py``).
    """
    if world <= 1:
        return {}
    args: dict = {} if on_cuda else {"use_cpu": True, "ddp_backend": "gloo"}
    if cfg.backend == "peft":
        args["ddp_find_unused_parameters"] = False
    return args


def trainer_bases(trainer) -> list[str]:
    """The trainer's classes, most derived first, down to transformers' ``Trainer``, as
    ``module.Name``: which ``SFTTrainer`` the run's trainer subclassed is decided at import time
    (TRL's own, unsloth_zoo's CPU subclass of it, or Unsloth's generated ``UnslothSFTTrainer`` on a
    GPU), so environment.json records it. unsloth_zoo's CPU subclass keeps TRL's module and name,
    hence ``trl.trainer.sft_trainer.SFTTrainer`` twice there."""
    from transformers import Trainer

    mro = type(trainer).__mro__
    return [f"{c.__module__}.{c.__name__}" for c in mro[:mro.index(Trainer) + 1]]


def make_trainer(cfg: RunConfig, model, tokenizer, train_ds, eval_ds, output_dir: str, callbacks: list,
                 extra_args: dict | None = None):
    """The project's SFTTrainer; ``extra_args`` are added to its TrainingArguments (tests use
    ``use_cpu``/``bf16`` to get CPU autocast). Under torchrun / accelerate launch the run is data
    parallel (see :func:`data_parallel_args`); ``cfg.train`` already holds each process's share of
    the batch (``kitrec_fast.parallel.distribute``)."""
    import torch
    from trl import SFTTrainer

    from kitrec_fast.train.loss import causal_lm_loss

    from kitrec_fast.artifacts.checkpoints import AtomicCheckpoints
    from kitrec_fast.backends.common import resolve_dtype

    on_cuda = torch.cuda.is_available()
    dtype = resolve_dtype(cfg.model.compute_dtype)
    bf16, fp16 = on_cuda and dtype == torch.bfloat16, on_cuda and dtype == torch.float16
    from kitrec_fast.parallel import world_size

    args = build_sft_config(cfg, output_dir, has_eval=eval_ds is not None and len(eval_ds) > 0, bf16=bf16, fp16=fp16,
                            extra={**data_parallel_args(cfg, on_cuda, world_size()), **(extra_args or {})})
    path = loss_path(cfg, on_cuda)
    eps = cfg.train.label_smoothing
    chunk = cfg.train.loss_chunk_size

    class KitrecSFTTrainer(AtomicCheckpoints, SFTTrainer):
        """SFTTrainer whose loss is computed from hidden states in chunks (no full logits).

        The smoothed objective is ``loss``/``eval_loss`` (comparable with the published eval loss,
        which the original Trainer reported with its smoothing); the plain cross-entropy over the
        same tokens is logged as ``nll``/``eval_nll``. Checkpoints are staged, synced and renamed
        into place (:class:`AtomicCheckpoints`).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            labels = inputs["labels"]
            if path == "library":
                out = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
                loss, nll = out.loss, out.loss.detach()
            else:
                _, head = _decoder_and_head(model)
                model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
                with final_hidden_states(model) as captured, lm_head_skipped(model):
                    model(**model_inputs, use_cache=False, logits_to_keep=1)
                hidden = captured.get("hidden")
                if hidden is None:
                    raise RuntimeError("the model's forward never ran its decoder; cannot compute the chunked loss")
                if mode == "train" and not self.kitrec_observed:
                    self.kitrec_observed.update({k: captured[k] for k in ("autocast", "autocast_dtype", "hidden_dtype")})
                loss, nll = causal_lm_loss(hidden, head.weight, labels, label_smoothing=eps,
                                           num_items_in_batch=num_items_in_batch, chunk_size=chunk,
                                           lm_head_bias=getattr(head, "bias", None))
            # Both paths normalise by the token count gathered over all ranks (see the helper).
            scale = data_parallel_loss_scale(self, num_items_in_batch)
            if scale != 1:
                loss = loss * scale
            self._metrics[mode]["nll"].append(self._logged_nll(nll, num_items_in_batch))
            if mode == "train":
                ids = inputs["input_ids"]
                local = (inputs["attention_mask"].sum() if "attention_mask" in inputs
                         else torch.tensor(ids.numel(), device=ids.device))  # on the device: NCCL gathers there
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(local.reshape(1)).sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            if return_outputs:
                return loss, {"loss": loss}
            return loss

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            self.kitrec_prior_loss_sum = read_loss_sum(resume_from_checkpoint)
            return super().train(resume_from_checkpoint, *args, **kwargs)

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                from kitrec_fast.fsio import atomic_write_json

                pending = getattr(self, "_tr_loss", None)  # steps not yet drained into a log event
                done = self._total_loss_scalar + (float(pending.item()) if pending is not None else 0.0)
                folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
                atomic_write_json(folder / LOSS_SUM_FILE, {"loss_sum": self.kitrec_prior_loss_sum + done,
                                                           "global_step": self.state.global_step})

        def log(self, logs, *args, **kwargs):
            if "train_loss" in logs and self.kitrec_prior_loss_sum and self.state.global_step:
                # the Trainer's train_loss is this attempt's sum / all steps; add the earlier steps' sum
                logs = {**logs, "train_loss": logs["train_loss"] + self.kitrec_prior_loss_sum / self.state.global_step}
            # Into the Trainer's own log event, so every report_to tracker receives them too.
            super().log(self.kitrec_metrics.add_to(logs), *args, **kwargs)

        def _logged_nll(self, nll, num_items_in_batch) -> float:
            """The nll entry of one micro-batch, such that the logged mean is the token-weighted nll
            of whole optimizer steps on any number of processes.

            With ``num_items_in_batch`` (training) ``nll`` is this micro-batch's token sum over the
            step's global token count: summed over ranks and the step's micro-batches it is the
            step's nll. Each entry is the rank sum times the micro-batches of the step, so the
            mean of the step's entries (TRL's ``log`` averages them) is that sum. In evaluation
            ``nll`` is the batch's mean, averaged over ranks as the Trainer averages ``eval_loss``.
            """
            if num_items_in_batch is None:
                if self.accelerator.num_processes == 1:
                    return float(nll)
                return float(self.accelerator.reduce(nll.detach().reshape(1).float(), reduction="mean"))
            share = self.accelerator.reduce(nll.detach().reshape(1).float(), reduction="sum")
            return float(share) * getattr(self, "current_gradient_accumulation_steps", 1)

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
    trainer.kitrec_prior_loss_sum = 0.0
    # Filled by the first training forward (see final_hidden_states); read by backends.runtime_facts.
    trainer.kitrec_observed = {}
    return trainer

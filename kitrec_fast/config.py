"""Typed configuration: one dataclass per stage, checked in ``__post_init__``.

A recipe YAML (top-level ``recipes/``) maps one-to-one onto ``RunConfig``: its top-level keys are
``data``, ``model``, ``lora`` and ``train`` plus the scalar run fields. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from kitrec_fast.errors import UserError, did_you_mean

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the option."""


def _check(cond: bool, option: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{option}: {msg}")


def _choice(value: Any, option: str, choices: tuple) -> None:
    _check(value in choices, option, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def _type_error(hint, value: Any) -> Optional[str]:
    """Why ``value`` is not of the annotated type ``hint`` (None if it is)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _type_error(next(a for a in args if a is not type(None)), value)
    if origin is Literal:
        return None if value in args else f"must be one of {', '.join(map(str, args))}, got {value!r}"
    if origin is list:
        ok = isinstance(value, list) and all(isinstance(v, args[0]) for v in value)
        return None if ok else f"expects a list of {args[0].__name__}, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expects true or false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expects a whole number, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expects a number, got {value!r}"
    if isinstance(hint, type):
        return None if isinstance(value, hint) else f"expects {hint.__name__}, got {value!r}"
    return None


@functools.cache
def _field_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_types(obj, section: str) -> None:
    """Every field against its annotation, so that a value of the wrong kind (1.5 rows per batch, a
    seed of 1.9) stops here instead of deep inside the trainer; ranges are checked after this.

    A whole-valued float for an int field (``2.0``) becomes the int; an int for a float field the float."""
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(obj):
        hint, value = _field_hints(type(obj))[f.name], getattr(obj, f.name)
        if hint is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = _type_error(hint, value)
        _check(problem is None, f"{prefix}{f.name}", problem or "")
        setattr(obj, f.name, value)


# Seeds go to numpy, which takes 0 .. 2**32 - 1.
_SEED_MAX = 2**32 - 1


# Names as transformers' ``report_to`` spells them; "none" turns tracking off.
TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")


def _tracker_list(value: Any) -> list[str]:
    """``train.report_to`` as a list: a YAML list, one name, or comma-separated names."""
    if value is None:
        return ["none"]
    items = value.split(",") if isinstance(value, str) else value
    _check(isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items), "train.report_to",
           f"must be a tracker name or a list of them ({', '.join(TRACKERS)}), got {value!r}")
    names = list(dict.fromkeys(v.strip().lower() for v in items if v.strip())) or ["none"]
    unknown = [n for n in names if n not in TRACKERS]
    _check(not unknown, "train.report_to", f"unknown tracker {', '.join(map(repr, unknown))}"
           f"{did_you_mean(unknown[0], TRACKERS) if unknown else ''}; "
           f"one or more of {', '.join(TRACKERS[1:])}, or none")
    _check(names == ["none"] or "none" not in names, "train.report_to",
           f"'none' cannot be combined with trackers, got {names}")
    return names


@dataclass
class DataConfig:
    """Where the rows come from and how they become token ids and labels."""

    dataset: str = field(default="Younggooo/kitrec-dualft_music-seta", metadata={
        "help": "Hub dataset id, or a local .jsonl/.json/.parquet file (.gz allowed), or 'embedded:NAME'."})
    dataset_split: str = field(default="train", metadata={"help": "Split to load from a Hub dataset."})
    tokenizer: Optional[str] = field(default=None, metadata={
        "help": "Tokenizer id or directory; defaults to the model's. 'offline:qwen3' builds the offline one."})
    val_fraction: float = field(default=0.1, metadata={"help": "Validation share, stratified by user_type."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the stratified split."})
    max_length: int = field(default=5120, metadata={
        "help": "Token budget of the whole rendered conversation (prompt + target + special tokens)."})
    max_candidates: int = field(default=50, metadata={
        "help": "Candidates kept in every prompt (the ground truth always among them)."})
    min_candidates: int = field(default=20, metadata={
        "help": "Floor for further candidate cuts when history cuts are not enough."})
    keep_cited_candidates: bool = field(default=False, metadata={
        "help": "Keep the candidates the training target cites first in the cut (after the ground truth); "
                "default false: the published recipe, which keeps only the ground truth for sure."})
    history_recent: Literal["last", "first"] = field(default="last", metadata={
        "help": "Which end of a history list is the most recent item (the other end is cut first)."})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={
        "help": "A row that fails validation or cannot fit: stop with an error, or skip it and report it."})
    limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N rows (debugging)."})

    def __post_init__(self):
        _check_types(self, "data")
        _check(bool(self.dataset), "data.dataset", "must not be empty")
        _check(0 <= self.split_seed <= _SEED_MAX, "data.split_seed",
               f"must be in [0, {_SEED_MAX}], got {self.split_seed}")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(self.max_length >= 256, "data.max_length", f"must be >= 256, got {self.max_length}")
        _check(self.max_candidates >= 1, "data.max_candidates", f"must be >= 1, got {self.max_candidates}")
        _check(1 <= self.min_candidates <= self.max_candidates, "data.min_candidates",
               f"must be in [1, max_candidates={self.max_candidates}], got {self.min_candidates}")
        _choice(self.history_recent, "data.history_recent", ("last", "first"))
        _choice(self.on_bad_row, "data.on_bad_row", ("error", "skip"))
        _check(self.limit is None or self.limit > 0, "data.limit", f"must be positive, got {self.limit}")


@dataclass
class ModelConfig:
    """Which weights are loaded, and how they are quantized."""

    name: str = field(default="Qwen/Qwen3-14B", metadata={
        "help": "Hub id or local directory of the base model; 'testkit:tiny-qwen3' is the offline tiny model."})
    weights: Literal["exact", "unsloth-dynamic"] = field(default="exact", metadata={
        "help": "exact: quantize the named checkpoint to nf4 on the fly (both backends load the very same files). "
                "unsloth-dynamic: let Unsloth swap in its pre-quantized dynamic 4-bit checkpoint (fast path only)."})
    load_in_4bit: bool = field(default=True, metadata={"help": "QLoRA: 4-bit base weights."})
    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "bitsandbytes 4-bit data type."})
    double_quant: bool = field(default=True, metadata={"help": "Quantize the quantization constants too."})
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="bfloat16", metadata={
        "help": "Matmul dtype; 'auto' and bfloat16 fall back to float32 on CPU and float16 on GPUs without bf16."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel of the peft backend."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the model."})
    eval_base: Literal["auto", "original", "trained"] = field(default="auto", metadata={
        "help": "The base evaluation, recommend and serve put this run's adapter on unless their --base says "
                "otherwise: original (the checkpoint unquantized), trained (the 4-bit weights training saw), "
                "auto (hf: trained; vLLM: original). Training does not read it."})

    def __post_init__(self):
        _check_types(self, "model")
        _check(bool(self.name), "model.name", "must not be empty")
        _choice(self.weights, "model.weights", ("exact", "unsloth-dynamic"))
        _choice(self.quant_type, "model.quant_type", ("nf4", "fp4"))
        _choice(self.compute_dtype, "model.compute_dtype", ("auto", "bfloat16", "float16", "float32"))
        _choice(self.eval_base, "model.eval_base", ("auto", "original", "trained"))


@dataclass
class LoraSettings:
    """The LoRA adapter; identical on both backends."""

    r: int = field(default=32, metadata={"help": "LoRA rank."})
    alpha: int = field(default=64, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    dropout: float = field(default=0.08, metadata={"help": "Dropout on the LoRA input."})
    bias: Literal["none"] = field(default="none", metadata={"help": "Only 'none' keeps Unsloth's fused kernels."})
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS), metadata={
        "help": "Projections that get an adapter."})

    def __post_init__(self):
        _check_types(self, "lora")
        _check(self.r > 0, "lora.r", f"must be positive, got {self.r}")
        _check(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        _choice(self.bias, "lora.bias", ("none",))
        unknown = sorted(set(self.target_modules) - set(PROJECTIONS))
        _check(bool(self.target_modules) and not unknown, "lora.target_modules",
               f"must be a non-empty subset of {PROJECTIONS}; unknown: {unknown}")


@dataclass
class TrainSettings:
    """Optimisation and schedule: the SPEC table, one field per row."""

    per_device_batch_size: int = field(default=2, metadata={"help": "Micro-batch size."})
    gradient_accumulation_steps: int = field(default=16, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Warmup share of the total steps."})
    weight_decay: float = field(default=0.02, metadata={"help": "AdamW weight decay."})
    epochs: float = field(default=3.0, metadata={"help": "Training epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: by epochs)."})
    label_smoothing: float = field(default=0.05, metadata={"help": "Label smoothing epsilon of the loss."})
    neftune_alpha: Optional[float] = field(default=5.0, metadata={"help": "NEFTune noise alpha (null: off)."})
    eval_steps: int = field(default=200, metadata={"help": "Evaluate every N optimizer steps."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int = field(default=3, metadata={"help": "Checkpoints kept (the best one always kept)."})
    early_stopping_patience: int = field(default=3, metadata={
        "help": "Stop after this many evaluations without improvement (0: off)."})
    early_stopping_threshold: float = field(default=0.001, metadata={
        "help": "Minimum eval_loss improvement that counts."})
    optim: str = field(default="adamw_torch_fused", metadata={"help": "transformers optimizer name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    gradient_checkpointing: Literal["auto", "unsloth", "standard", "off"] = field(default="auto", metadata={
        "help": "auto: Unsloth's offloaded checkpointing on the fast path, non-reentrant torch checkpointing "
                "on the peft path."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch rows of similar length together."})
    padding_free: bool = field(default=False, metadata={
        "help": "Concatenate the micro-batch into one row instead of padding (changes NEFTune's noise scale)."})
    loss: Literal["auto", "chunked", "library"] = field(default="auto", metadata={
        "help": "auto: the chunked smoothed loss when label_smoothing > 0, else the library's fused loss."})
    loss_chunk_size: int = field(default=1024, metadata={"help": "Trained tokens per LM-head chunk."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation and data order."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={
        "help": f"Experiment trackers that receive the logged metrics: none or any of {', '.join(TRACKERS[1:])} "
                "(a list, or comma-separated on the command line); needs `pip install kitrec_fast[track]`."})
    world_size: int = field(default=1, metadata={
        "help": "Data-parallel processes (set from torchrun / accelerate launch, not by hand); each accumulates "
                "1/world_size of the micro-batches."})

    def __post_init__(self):
        self.report_to = _tracker_list(self.report_to)  # a name or comma-separated names, as a list
        _check_types(self, "train")
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                     "save_total_limit", "logging_steps", "loss_chunk_size", "world_size"):
            _check(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.learning_rate > 0, "train.learning_rate", f"must be positive, got {self.learning_rate}")
        _check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.epochs > 0, "train.epochs", f"must be positive, got {self.epochs}")
        _check(self.max_steps == -1 or self.max_steps > 0, "train.max_steps", f"must be -1 or > 0, got {self.max_steps}")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing",
               f"must be in [0, 1), got {self.label_smoothing}")
        _check(self.neftune_alpha is None or self.neftune_alpha > 0, "train.neftune_alpha",
               f"must be positive or null, got {self.neftune_alpha}")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
        _check(self.early_stopping_threshold >= 0, "train.early_stopping_threshold",
               f"must be >= 0, got {self.early_stopping_threshold}")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm",
               f"must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        _check(0 <= self.seed <= _SEED_MAX, "train.seed", f"must be in [0, {_SEED_MAX}], got {self.seed}")
        _check(self.save_steps % self.eval_steps == 0, "train.save_steps",
               f"must be a multiple of eval_steps={self.eval_steps} (the best checkpoint is chosen by eval_loss), "
               f"got {self.save_steps}")
        _choice(self.gradient_checkpointing, "train.gradient_checkpointing", ("auto", "unsloth", "standard", "off"))
        _choice(self.loss, "train.loss", ("auto", "chunked", "library"))

    @property
    def effective_batch_size(self) -> int:
        """Rows per optimizer step over all data-parallel processes."""
        return self.per_device_batch_size * self.gradient_accumulation_steps * self.world_size


@dataclass
class RunConfig:
    """One training run: a recipe resolved with its overrides."""

    recipe: str = field(default="custom", metadata={"help": "Recipe name (the YAML file's stem)."})
    backend: Literal["unsloth", "peft"] = field(default="unsloth", metadata={
        "help": "unsloth: the fast path. peft: plain transformers + bitsandbytes + PEFT baseline."})
    output_dir: str = field(default="runs/{recipe}-{backend}", metadata={
        "help": "Run directory; {recipe} and {backend} are filled in."})
    smoke: bool = field(default=False, metadata={"help": "Tiny model, embedded data, a few steps (CPU-friendly)."})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "Upload the best adapter to this repo."})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        _check_types(self, "")
        _choice(self.backend, "backend", ("unsloth", "peft"))
        _check(not (self.backend == "peft" and self.model.weights == "unsloth-dynamic"), "model.weights",
               "unsloth-dynamic checkpoints are for the unsloth backend; use 'exact' with --backend peft")
        # Unsloth's loader always quantizes to nf4 with double quantization.
        _check(self.backend != "unsloth" or (self.model.quant_type == "nf4" and self.model.double_quant),
               "model.quant_type", "the unsloth backend quantizes to nf4 with double quant only")

    @property
    def resolved_output_dir(self) -> str:
        return self.output_dir.format(recipe=self.recipe, backend=self.backend)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "lora": LoraSettings, "train": TrainSettings}


def _build(cls, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        hint = did_you_mean(unknown[0], names) if len(unknown) == 1 else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; known: {sorted(names)}")
    return cls(**values)


def config_from_dict(raw: dict) -> RunConfig:
    """Build a RunConfig from nested plain data (a parsed recipe), rejecting unknown keys."""
    raw = dict(raw)
    sections = {name: _build(cls, dict(raw.pop(name, None) or {}), name) for name, cls in _SECTIONS.items()}
    return _build(RunConfig, {**raw, **sections}, "recipe")


def _coerce(text: str, current: Any, option: str, hint=None) -> Any:
    """Parse an override string with YAML rules, then check it against the current value's type."""
    import yaml

    try:
        value = yaml.safe_load(text) if isinstance(text, str) else text
    except yaml.YAMLError as exc:
        raise ConfigError(f"{option}: cannot parse {text!r}: {exc}") from None
    if hint in (str, Optional[str]) and value is not None and isinstance(text, str):
        return text  # a text setting (a revision "1234") stays the text typed
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        _check(isinstance(value, bool), option, f"expects true/false, got {text!r}")
    elif isinstance(current, (int, float)):
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{option}: expects a number, got {text!r}") from None
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), option,
               f"expects a number, got {text!r}")
        if isinstance(current, int) and float(value).is_integer():
            value = int(value)
    elif isinstance(current, str):
        value = str(text) if not isinstance(value, str) else value
    elif isinstance(current, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        _check(isinstance(value, list), option, f"expects a list, got {text!r}")
    return value


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Apply dotted-key overrides (``train.learning_rate=1e-4``) to nested recipe data; returns a copy."""
    import copy

    out = copy.deepcopy(raw)
    defaults = RunConfig().to_dict()
    for key, text in overrides.items():
        parts = key.split(".")
        node, ref, cls = out, defaults, RunConfig
        for part in parts[:-1]:
            if not isinstance(ref, dict) or part not in ref:
                sections = [k for k, v in ref.items() if isinstance(v, dict)] if isinstance(ref, dict) else []
                raise ConfigError(f"{key}: unknown option (no section {part!r}){did_you_mean(part, sections)}")
            node = node.setdefault(part, {})
            ref = ref[part]
            cls = _field_hints(cls).get(part)
        leaf = parts[-1]
        if not isinstance(ref, dict) or leaf not in ref or isinstance(ref[leaf], dict):
            prefix = ".".join(parts[:-1] + [""])
            options = [prefix + k for k, v in ref.items() if not isinstance(v, dict)] if isinstance(ref, dict) else []
            raise ConfigError(f"{key}: unknown option{did_you_mean(key, options)}")
        current = node.get(leaf, ref[leaf])
        node[leaf] = _coerce(text, current, key, _field_hints(cls).get(leaf))
    return out

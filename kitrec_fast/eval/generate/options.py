"""What one ``eval generate`` is asked to do, checked before any work, and the run/model it names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from kitrec_fast.errors import UserError

PREDICTIONS_FILE = "predictions.jsonl"
CONFIG_FILE = "generate_config.json"
ENGINES = ("auto", "hf", "vllm")
# vllm: rows per engine call; continuous batching keeps the engine full only with a deep queue (a
# call's slowest row otherwise sets its length), and a kill loses at most one call's rows.
DEFAULT_BATCH = {"hf": 4, "vllm": 256}


class GenerateError(UserError):
    """A problem with the options, the run directory or the output directory of `eval generate`."""


@dataclass
class GenerateOptions:
    dataset: str
    output: Path
    run_dir: Optional[Path] = None
    # Several runs of one base (``--run A B ...``): one engine, OUTPUT/<run name>/ each. A single
    # entry is the same as ``run_dir``.
    runs: Sequence[Path] = ()
    model: Optional[str] = None
    adapter: Optional[str] = None
    backend: Optional[str] = None
    engine: str = "auto"  # auto: vllm where importable and a GPU is present, else hf
    # auto: each engine's own protocol (hf: the 4-bit model as trained; vllm: the original base);
    # original: the base checkpoint unquantized; trained: the weights training saw (trained_base.py);
    # None (not given): the run's model.eval_base, else auto (trained_base.choose_base)
    base: Optional[str] = None
    split: str = "test"
    limit: Optional[int] = None
    limit_per_type: Optional[int] = None
    user_types: list[str] = field(default_factory=list)
    max_new_tokens: int = 2048
    batch_size: Optional[int] = None  # None: DEFAULT_BATCH of the engine
    # None (or 0): every candidate of the prompt, as the paper evaluates; N: the training cut to N
    max_candidates: Optional[int] = None
    max_prompt_tokens: Optional[int] = None
    tokenizer: Optional[str] = None
    on_bad_row: str = "error"
    sort_by_length: bool = True
    prepare_only: bool = False  # build and measure the pending prompts, record them, start no engine

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.engine not in ENGINES:
            raise GenerateError(f"--engine: must be auto, hf or vllm, got {self.engine!r}")
        if self.base is not None and self.base not in ("auto", "original", "trained"):
            raise GenerateError(f"--base: must be auto, original or trained, got {self.base!r}")
        runs = [Path(r) for r in (self.runs or ())]
        if self.run_dir is not None and runs:
            raise GenerateError("give the run directories once, as --run RUN_DIR [RUN_DIR ...]")
        if len(runs) == 1:
            self.run_dir, runs = runs[0], []
        self.runs = tuple(runs)
        if runs:
            if self.adapter is not None:
                raise GenerateError("--adapter names one adapter; with several --run directories each run's "
                                    "own adapter/ is used")
            names = [r.name for r in runs]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise GenerateError(f"--run: several runs are named {', '.join(twice)}; each run's predictions "
                                    "go to OUTPUT/<run name>/, so the names must differ")
        if self.max_new_tokens < 1:
            raise GenerateError(f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise GenerateError(f"--limit: must be >= 1, got {self.limit}")
        if self.limit_per_type is not None and self.limit_per_type < 1:
            raise GenerateError(f"--limit-per-type: must be >= 1, got {self.limit_per_type}")
        if self.batch_size is not None and self.batch_size < 1:
            raise GenerateError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.max_candidates is not None and self.max_candidates < 0:
            raise GenerateError(f"--max-candidates: must be >= 1 (or left out to keep all), got {self.max_candidates}")
        if self.max_candidates == 0:
            self.max_candidates = None
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise GenerateError(f"--max-prompt-tokens: must be >= 1, got {self.max_prompt_tokens}")
        if self.on_bad_row not in ("error", "skip"):
            raise GenerateError(f"--on-bad-row: must be error or skip, got {self.on_bad_row!r}")

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or DEFAULT_BATCH[self.engine]

    def single_runs(self) -> list["GenerateOptions"]:
        """One options object per run: with several runs, run NAME writes to OUTPUT/NAME."""
        if not self.runs:
            return [self]
        return [dataclasses.replace(self, run_dir=r, runs=(), output=self.output / r.name) for r in self.runs]

    def argv(self) -> list[str]:
        """The ``eval generate`` arguments that ask for exactly these options (one run or none)."""
        args = ["--dataset", self.dataset, "--output", str(self.output), "--split", self.split,
                "--engine", self.engine, "--max-new-tokens", str(self.max_new_tokens), "--on-bad-row", self.on_bad_row]
        for flag, value in (("--run", self.run_dir), ("--model", self.model), ("--adapter", self.adapter),
                            ("--base", self.base),
                            ("--backend", self.backend), ("--limit", self.limit),
                            ("--limit-per-type", self.limit_per_type), ("--batch-size", self.batch_size),
                            ("--max-candidates", self.max_candidates), ("--max-prompt-tokens", self.max_prompt_tokens),
                            ("--tokenizer", self.tokenizer)):
            if value is not None:
                args += [flag, str(value)]
        if self.user_types:
            args += ["--user-type", *self.user_types]
        if not self.sort_by_length:
            args.append("--no-sort")
        if self.prepare_only:
            args.append("--prepare-only")
        return args


def resolve_config(opts: GenerateOptions):
    """``(RunConfig, adapter_dir or None)`` from ``--run`` and/or ``--model``/``--adapter``/``--backend``."""
    from kitrec_fast.config import ModelConfig, RunConfig

    if opts.run_dir is not None:
        from kitrec_fast.artifacts import rundir

        run_dir = Path(opts.run_dir)
        if not (run_dir / rundir.RESOLVED_CONFIG).is_file():
            raise GenerateError(f"--run: {run_dir} has no {rundir.RESOLVED_CONFIG} (is it a kitrec_fast run directory?)")
        cfg = rundir.read_resolved_config(run_dir)
        adapter = opts.adapter or str(run_dir / rundir.ADAPTER_DIR)
    elif opts.model is not None:
        cfg = RunConfig(model=ModelConfig(name=opts.model))
        adapter = opts.adapter
    else:
        raise GenerateError("give --run RUN_DIR, or --model M (with --adapter A for a trained adapter)")
    if opts.model is not None and opts.run_dir is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=opts.model))
    if opts.backend is not None and opts.backend != cfg.backend:
        weights = "exact" if opts.backend == "peft" else cfg.model.weights
        cfg = dataclasses.replace(cfg, backend=opts.backend, model=dataclasses.replace(cfg.model, weights=weights))
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise GenerateError(f"--adapter: {adapter} has no adapter_config.json (did training finish? "
                            "a run that was interrupted has checkpoints but no adapter/ yet)")
    return cfg, adapter

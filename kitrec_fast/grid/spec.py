"""What a grid is: its jobs (recipe x set x backend), their directories and their commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kitrec_fast.errors import UserError, did_you_mean
from kitrec_fast.recipes import FAMILIES

SETS = ("A", "B")
BACKENDS = ("unsloth", "peft")
# Stages of one job, in order; each is one command in a fresh process.
STAGES = ("train", "generate", "score")
# Smoke evaluation sizes (used where --eval-limit-per-type / --eval-max-new-tokens are not given):
# the tiny random model answers nonsense either way, so a few rows with short answers check the
# whole evaluation path. With eval generate's defaults (every row, 2,048 new tokens, all 100
# candidates: prompts past the tiny model's 8,192 positions) one smoke job took ~7 minutes.
SMOKE_EVAL_LIMIT_PER_TYPE = 2
SMOKE_EVAL_MAX_NEW_TOKENS = 32
SMOKE_EVAL_MAX_CANDIDATES = 20


class GridError(UserError):
    """A grid that cannot run as asked (bad recipe, set, override, cluster)."""


def eval_user_types(family: str) -> list[str]:
    """The test-set user types a model of this family is evaluated on (its training domain)."""
    kind, domain = family.split("_", 1)
    if kind == "dualft":
        return [f"overlapping_books_{domain}"] + [f"cold_start_{n}core_{domain}" for n in (2, 3, 4)]
    return [f"source_only_{domain}"]


def test_dataset(family: str, set_name: str, smoke: bool) -> str:
    if smoke:  # the embedded test samples hold every user type of their domain
        return f"embedded:test_{family.split('_', 1)[1]}"
    return f"Younggooo/kitrec-test-set{set_name.lower()}"


@dataclass(frozen=True)
class GridSpec:
    """The whole grid as the user asked for it; ``settings()`` is what a rerun must repeat."""

    output: Path
    families: tuple[str, ...] = FAMILIES
    sets: tuple[str, ...] = SETS
    backends: tuple[str, ...] = ("unsloth",)
    smoke: bool = False
    overrides: tuple[str, ...] = ()
    eval_limit_per_type: Optional[int] = None
    eval_max_new_tokens: Optional[int] = None
    eval_base: Optional[str] = None  # eval generate's --base; None: each run's model.eval_base
    max_retries: int = 2
    # recipe names given as full names (dualft_music_setb) pin their own set
    pinned: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self):
        for fam in self.families:
            if fam not in FAMILIES:
                raise GridError(f"unknown recipe {fam!r}{did_you_mean(fam, FAMILIES)}; "
                                f"one of: {', '.join(FAMILIES)} "
                                "(or a full name such as dualft_music_setb)")
        for s in self.sets:
            if s not in SETS:
                raise GridError(f"--sets: unknown set {s!r}; one of: A, B")
        for b in self.backends:
            if b not in BACKENDS:
                raise GridError(f"--backends: unknown backend {b!r}; one of: {', '.join(BACKENDS)}")
        for item in self.overrides:
            key, sep, _ = item.partition("=")
            if not sep or not key.strip():
                raise GridError(f"{item}: overrides are KEY=VALUE (e.g. train.learning_rate=1e-4)")
            if key.strip() in ("output_dir", "backend", "smoke"):
                raise GridError(f"{key}: set by the grid for each job (use --output, --backends, --smoke)")
        if self.eval_limit_per_type is not None and self.eval_limit_per_type < 1:
            raise GridError(f"--eval-limit-per-type: must be >= 1, got {self.eval_limit_per_type}")
        if self.eval_base is not None and self.eval_base not in ("auto", "original", "trained"):
            raise GridError(f"--base: must be auto, original or trained, got {self.eval_base!r}")
        if self.eval_max_new_tokens is not None and self.eval_max_new_tokens < 1:
            raise GridError(f"--eval-max-new-tokens: must be >= 1, got {self.eval_max_new_tokens}")
        if self.max_retries < 0:
            raise GridError(f"--max-retries: must be >= 0, got {self.max_retries}")
        if self.smoke:  # frozen: the smoke sizes become the grid's recorded settings
            if self.eval_limit_per_type is None:
                object.__setattr__(self, "eval_limit_per_type", SMOKE_EVAL_LIMIT_PER_TYPE)
            if self.eval_max_new_tokens is None:
                object.__setattr__(self, "eval_max_new_tokens", SMOKE_EVAL_MAX_NEW_TOKENS)

    def settings(self) -> dict:
        """What changes the result of a job; a rerun into the same --output must match it."""
        return {"smoke": self.smoke, "overrides": list(self.overrides),
                "eval_limit_per_type": self.eval_limit_per_type, "eval_max_new_tokens": self.eval_max_new_tokens,
                # only when given: grids started before --base existed keep matching (the recipes' and
                # overrides' model.eval_base is in "overrides" or the recipes themselves)
                **({"eval_base": self.eval_base} if self.eval_base is not None else {})}

    def jobs(self) -> list["Job"]:
        pairs = [(f, s) for f in self.families for s in self.sets] + list(self.pinned)
        seen, out = set(), []
        for fam, s in pairs:
            for b in self.backends:
                job = Job(family=fam, set_name=s, backend=b, spec=self)
                if job.id not in seen:
                    seen.add(job.id)
                    out.append(job)
        return out


@dataclass(frozen=True)
class Job:
    family: str
    set_name: str
    backend: str
    spec: GridSpec = field(repr=False, compare=False)

    @property
    def recipe(self) -> str:
        return f"{self.family}_set{self.set_name.lower()}"

    @property
    def id(self) -> str:
        return f"{self.recipe}-{self.backend}"

    @property
    def run_dir(self) -> Path:
        return self.spec.output / "runs" / self.id

    @property
    def eval_dir(self) -> Path:
        return self.spec.output / "eval" / self.id

    @property
    def score_dir(self) -> Path:
        return self.eval_dir / "score"

    def log_path(self, stage: str, attempt: int) -> Path:
        return self.spec.output / "logs" / self.id / f"{stage}.{attempt}.log"

    def train_command(self, dry_run: bool = False) -> list[str]:
        """The recipe's own command; rerunning it resumes from the newest checkpoint."""
        cmd = ["-m", f"kitrec_fast.recipes.{self.family}", "--set", self.set_name,
               "--backend", self.backend, "--output-dir", str(self.run_dir)]
        if self.spec.smoke:
            cmd.append("--smoke")
        if dry_run:
            cmd.append("--dry-run")
        return cmd + list(self.spec.overrides)

    @property
    def eval_group(self) -> tuple[str, tuple[str, ...]]:
        """Jobs with the same test set and user types are evaluated together: one engine, one
        LoRA request per run (the grid's recipes share one base, Qwen3-14B; `eval generate`
        refuses runs of different bases)."""
        return test_dataset(self.family, self.set_name, self.spec.smoke), tuple(eval_user_types(self.family))

    def generate_commands(self, group: "list[Job] | None" = None) -> list[list[str]]:
        """``eval generate`` for this job, or for every job of its ``group`` through one engine
        (each run's predictions in its own eval_dir), every user type in one call, so one process
        loads the model once. It resumes: no row is written twice."""
        group = group or [self]
        output = self.eval_dir if len(group) == 1 else self.spec.output / "eval"  # several: OUTPUT/<run name>/
        base = ["-m", "kitrec_fast", "eval", "generate", "--run", *(str(j.run_dir) for j in group),
                "--dataset", test_dataset(self.family, self.set_name, self.spec.smoke), "--split", "test",
                "--output", str(output)]
        if self.spec.eval_max_new_tokens is not None:
            base += ["--max-new-tokens", str(self.spec.eval_max_new_tokens)]
        if self.spec.eval_base is not None:  # else each run's model.eval_base
            base += ["--base", self.spec.eval_base]
        if self.spec.smoke:
            base += ["--max-candidates", str(SMOKE_EVAL_MAX_CANDIDATES)]
        base += ["--user-type", *eval_user_types(self.family)]
        if self.spec.eval_limit_per_type is not None:
            base += ["--limit-per-type", str(self.spec.eval_limit_per_type)]
        return [base]

    @property
    def eval_rows_expected(self) -> int | None:
        """Rows the job's generation writes in all, when the grid knows it (a per-type limit; a type
        with fewer rows ends sooner); otherwise the running command's selection tells."""
        if self.spec.eval_limit_per_type is None:
            return None
        return self.spec.eval_limit_per_type * len(eval_user_types(self.family))

    def score_command(self) -> list[str]:
        return ["-m", "kitrec_fast", "eval", "score",
                "--predictions", str(self.eval_dir / "predictions.jsonl"), "--output", str(self.score_dir)]

    def commands(self, stage: str) -> list[list[str]]:
        """Python arguments of the stage's commands; the node that runs them supplies its interpreter."""
        if stage == "train":
            return [self.train_command()]
        if stage == "generate":
            return self.generate_commands()
        return [self.score_command()]

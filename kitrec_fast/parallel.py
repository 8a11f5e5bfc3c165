"""Data parallelism: which process of a ``torchrun`` / ``accelerate launch`` job this is, and each
process's share of the effective batch.

Both launchers start one process per device and set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
the Trainer then wraps the model in DistributedDataParallel. A recipe's batch settings describe
one process (``per_device_batch_size x gradient_accumulation_steps``, 32 rows for the paper's
recipes); on N processes each one accumulates 1/N of the micro-batches, so an optimizer step still
sees the same number of rows and the learning-rate schedule and step count do not change.
"""

from __future__ import annotations

import dataclasses
import os

from kitrec_fast.errors import UserError


class BatchSplitError(UserError):
    """The effective batch cannot be split evenly over the launched processes."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    return _env_int("RANK", 0)


def local_rank() -> int:
    """The device index of this process on its node (what ``device_map`` must name)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """Rank 0 writes the run directory and talks on the console; the other ranks only train."""
    return rank() == 0


def distribute(cfg, world: int | None = None):
    """``cfg`` with gradient accumulation divided over ``world`` processes (default: the launcher's).

    The effective batch ``per_device_batch_size x gradient_accumulation_steps`` of the resolved
    recipe is kept: each process accumulates ``effective / (per_device_batch_size x world)``
    micro-batches. ``train.world_size`` records the split (a resume on another world size with the
    same effective batch is not a config change).
    """
    world = world_size() if world is None else world
    t = cfg.train
    if t.world_size != 1:
        raise BatchSplitError(
            f"train.world_size: set by the launcher (torchrun --nproc_per_node / accelerate launch "
            f"--num_processes), not by hand; got train.world_size={t.world_size}")
    if world == 1:
        return cfg
    effective = t.per_device_batch_size * t.gradient_accumulation_steps
    per_step = t.per_device_batch_size * world
    if effective % per_step:
        raise BatchSplitError(
            f"the effective batch of {effective} rows (train.per_device_batch_size {t.per_device_batch_size} x "
            f"train.gradient_accumulation_steps {t.gradient_accumulation_steps}) does not split over {world} "
            f"processes of {t.per_device_batch_size} rows each; choose train.per_device_batch_size so that "
            f"train.per_device_batch_size x {world} divides {effective}, launch a number of processes that does, "
            f"or change the effective batch with train.gradient_accumulation_steps")
    train = dataclasses.replace(t, gradient_accumulation_steps=effective // per_step, world_size=world)
    out = dataclasses.replace(cfg, train=train)
    if hasattr(cfg, "_warnings"):
        out._warnings = list(cfg._warnings)
    return out

"""The eight KitREC recipes: YAML files in the top-level ``recipes/`` folder are the source of truth.

``python -m kitrec_fast.recipes.<family>`` runs one (``--set B`` for the Set B model). From a
checkout or an editable install the YAML is read from ``recipes/``; an installed wheel carries the
same files as ``kitrec_fast/_recipes/``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kitrec_fast.config import ConfigError
from kitrec_fast.errors import UserError, did_you_mean

FAMILIES = ("dualft_music", "dualft_movies", "singleft_music", "singleft_movies")

# The embedded smoke configuration: the recipe's own code path with the tiny offline Qwen3, the
# embedded synthetic sample and a few steps. Hyperparameters not listed keep the recipe's values.
# The model stays the head_dim-16 one, which vLLM's CPU attention cannot serve: its head_dim-64
# sibling (testkit:tiny-qwen3-hd64, 39.2M instead of 19.6M parameters: the untied embedding and LM
# head double with the hidden size) made the peft smoke run take 21% more CPU time (161.7 s vs
# 133.3 s user+sys, one back-to-back pair on 2 cores shared with other work, whose load made wall
# times meaningless; 2026-12-04). README "Evaluating at scale" shows the one extra command that
# trains the smoke run on it to try vLLM on CPU.
SMOKE_OVERRIDES = {
    "model.name": "testkit:tiny-qwen3",
    "model.compute_dtype": "auto",
    "data.tokenizer": "offline:qwen3",
    "data.limit": 40,
    "train.max_steps": 4,
    "train.gradient_accumulation_steps": 1,
    "train.eval_steps": 2,
    "train.save_steps": 2,
    "train.logging_steps": 1,
    "output_dir": "runs/{recipe}-{backend}-smoke",
}


class UnknownRecipe(UserError, FileNotFoundError):
    """A recipe name or YAML path that does not exist."""


def family_of(recipe: str) -> str:
    """'dualft_music_setb' -> 'dualft_music'; a name without a set suffix is its own family."""
    return recipe.rsplit("_set", 1)[0] if "_set" in recipe else recipe


def recipes_dir() -> Path:
    pkg = Path(__file__).resolve().parent.parent
    for candidate in (pkg / "_recipes", pkg.parent / "recipes"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise FileNotFoundError(f"no recipe YAML found in {pkg / '_recipes'} or {pkg.parent / 'recipes'}")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe_name(family_or_name: str, set_name: str | None = None) -> str:
    """'dualft_music' + 'B' -> 'dualft_music_setb'; full names and YAML paths pass through."""
    if family_or_name.endswith((".yaml", ".yml")):
        return family_or_name
    if family_or_name in FAMILIES:
        return f"{family_or_name}_set{(set_name or 'A').lower()}"
    if set_name is not None and set_name.upper() != family_or_name[-1:].upper():
        raise ConfigError(f"--set {set_name} conflicts with recipe {family_or_name}")
    return family_or_name


def load_recipe(name: str) -> dict:
    """The raw YAML mapping of a recipe (by name, or a path to a YAML file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        known = list_recipes()
        raise UnknownRecipe(f"unknown recipe {name!r}{did_you_mean(name, known + list(FAMILIES))}; "
                            f"available: {', '.join(known)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return raw


def smoke_overrides(raw: dict) -> dict:
    """Smoke overrides for a recipe: its embedded sample matches its kind and domain."""
    family = family_of(str(raw.get("recipe", "")))
    dataset = f"embedded:{family}" if family in FAMILIES else "embedded:dualft_music"
    return {**SMOKE_OVERRIDES, "data.dataset": dataset}

"""Model cards parse back with huggingface_hub the way the Hub reads them (metadata, not text search)."""

from huggingface_hub import ModelCard

from kitrec_fast.artifacts.model_card import render_merged_card, render_model_card
from kitrec_fast.config import config_from_dict
from kitrec_fast.recipes import load_recipe


def _cfg(name="dualft_music_seta"):
    return config_from_dict(load_recipe(name))


SUMMARY = {"weights": "Qwen/Qwen3-14B", "global_step": 1000, "max_steps": 1014, "best_eval_loss": 1.59531,
           "best_checkpoint": "checkpoint-1000", "status": "finished"}


def test_adapter_card_metadata_reads_back():
    card = ModelCard(render_model_card(_cfg(), SUMMARY, {}))
    data = card.data
    assert data.base_model == "Qwen/Qwen3-14B"
    assert data.library_name == "peft"
    assert data.datasets == ["Younggooo/kitrec-dualft_music-seta"]
    assert {"kitrec", "qlora", "unsloth"} <= set(data.tags)
    (result,) = data.eval_results
    assert result.metric_type == "loss" and result.metric_value == 1.5953
    assert result.dataset_type == "Younggooo/kitrec-dualft_music-seta"
    assert "# dualft_music_seta: KitREC LoRA adapter" in card.text


# Three distinct sources, as on the fast path with unsloth-dynamic weights: the recipe's model name,
# the pre-quantized 4-bit checkpoint the adapter was trained on, and the 16-bit checkpoint a merge
# goes into. Each card must name the right one.
RECIPE_MODEL, QUANTISED, MERGE_BASE = "Qwen/Qwen3-14B", "unsloth/Qwen3-14B-unsloth-bnb-4bit", "unsloth/Qwen3-14B"


def test_merged_card_points_at_the_base_and_says_merged():
    info = {"base_model": MERGE_BASE, "dtype": "bfloat16", "merged_modules": 280, "merged_layers": 40}
    cfg = _cfg("singleft_movies_setb")
    assert cfg.model.name == RECIPE_MODEL
    card = ModelCard(render_merged_card(cfg, {**SUMMARY, "weights": QUANTISED}, {}, info))
    # the merged weights are 16-bit: never the quantised id the adapter was trained on
    assert card.data.base_model == MERGE_BASE and card.data.library_name == "transformers"
    assert "merged" in card.data.tags and card.data.datasets == ["Younggooo/kitrec-singleft_movies-setb"]
    assert "AutoModelForCausalLM" in card.text and "AutoPeft" not in card.text
    assert "to 280 modules in 40 layers" in card.text


def test_adapter_card_names_the_weights_it_was_trained_on():
    # an adapter loads onto the checkpoint it was trained on (its adapter_config's base_model_name_or_path)
    data = ModelCard(render_model_card(_cfg(), {**SUMMARY, "weights": QUANTISED}, {})).data
    assert data.base_model == QUANTISED


def test_smoke_card_names_the_data_it_trained_on():
    cfg = _cfg()
    cfg.smoke = True
    cfg.data.dataset = "/data/my_rows.jsonl"
    text = render_model_card(cfg, SUMMARY, {})
    assert "**Smoke run**" in text and "`/data/my_rows.jsonl`" in text and "embedded synthetic" not in text
    cfg.data.dataset = "embedded:dualft_music"
    assert "embedded synthetic data" in render_model_card(cfg, SUMMARY, {})


def test_local_dataset_has_no_hub_dataset_or_result():
    cfg = _cfg()
    cfg.data.dataset = "embedded:dualft_music"
    data = ModelCard(render_model_card(cfg, SUMMARY, {})).data
    assert data.datasets is None and data.eval_results is None

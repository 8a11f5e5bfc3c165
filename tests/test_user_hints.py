"""Messages that tell a user what they probably meant or what to do instead."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from kitrec_fast.config import ConfigError, TrainSettings, apply_overrides, config_from_dict
from kitrec_fast.errors import UserError, did_you_mean


@pytest.mark.parametrize("call,hint", [
    (lambda: __import__("kitrec_fast.recipes", fromlist=["load_recipe"]).load_recipe("dualft_musci"),
     "did you mean 'dualft_music'?"),
    (lambda: config_from_dict({"data": {"max_lenght": 4096}}), "did you mean 'max_length'?"),
    (lambda: config_from_dict({"lora": {"r": 8}, "trian": {}}), "did you mean 'train'?"),
    (lambda: apply_overrides({}, {"train.learnig_rate": "1e-4"}), "did you mean 'train.learning_rate'?"),
    (lambda: apply_overrides({}, {"trian.learning_rate": "1e-4"}), "did you mean 'train'?"),
    (lambda: TrainSettings(report_to="tensorbord"), "did you mean 'tensorboard'?"),
])
def test_mistyped_names_get_the_closest_known_one(call, hint):
    with pytest.raises(UserError) as info:
        call()
    assert hint in str(info.value)


def test_mistyped_user_type_is_an_error_with_a_suggestion_not_zero_rows():
    from kitrec_fast.eval.generate import GenerateError, select_rows

    raw = [{"user_type": t} for t in ("cold_start_2core_music", "overlapping_books_music")]
    with pytest.raises(GenerateError, match=r"'cold_start_2core_musci' \(did you mean 'cold_start_2core_music'\?\); "
                                            r"the dataset holds cold_start_2core_music, overlapping_books_music"):
        select_rows(raw, ["cold_start_2core_musci"], None)
    assert select_rows(raw, ["overlapping_books_music"], None) == [1]


def test_no_suggestion_for_an_unrelated_name():
    assert did_you_mean("zzz", ["tensorboard", "wandb"]) == ""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"qqqq": 1}})
    assert "did you mean" not in str(info.value)


def test_extending_a_finished_run_names_a_new_output_dir(smoke_run, tmp_path):
    from kitrec_fast.artifacts import rundir
    from kitrec_fast.train.run import ConfigChangedError, inspect_run_dir

    run = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir, run)
    cfg = rundir.read_resolved_config(run)
    cfg = dataclasses.replace(cfg, output_dir=str(run), train=dataclasses.replace(cfg.train, max_steps=12))
    for accept in (False, True):  # --accept-config-change does not make a finished run resumable
        with pytest.raises(ConfigChangedError) as info:
            inspect_run_dir(cfg, accept_config_change=accept)
        msg = str(info.value)
        assert "train.max_steps: 6 -> 12" in msg and "not extended to more steps" in msg
        assert "--output-dir NEW_DIR" in msg and "--accept-config-change" not in msg

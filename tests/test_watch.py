"""Accuracy watched while training: which questions, which steps, the rows in metrics.csv on a short tiny run."""

from unittest import mock

import pytest

from grpo_helpers import callbacks, data, evaluation, modeling, paths, tiny, training, watch
from grpo_helpers.generation import SamplingSettings
from grpo_helpers.plotting import metrics_table, plot_training_curves
from grpo_helpers.profiles import PROFILES

TINY = PROFILES["tiny"]


def test_every_profile_watches_by_default():
    for profile in PROFILES.values():
        assert profile.watch_questions > 0 and profile.watch_every_steps >= 1
    assert watch.watch_steps(TINY) == [0, 20, 40, 60, 80]
    assert watch.watch_steps(TINY.replace(watch_every_steps=3), max_steps=7) == [0, 3, 6, 7]


def test_the_watch_set_is_held_out_and_not_notebook_05s_first_questions():
    questions = watch.watch_dataset(TINY)
    whole_split = data.load_gsm8k("test", TINY.replace(test_limit=None))
    assert len(questions) == TINY.watch_questions
    assert [q["index"] for q in questions] == list(range(len(whole_split) - TINY.watch_questions, len(whole_split)))
    first_scored = set(data.load_gsm8k("test", TINY)["question"][:TINY.eval_questions])
    assert not first_scored & {q["question"] for q in questions}


def test_on_real_gsm8k_the_t4_watch_set_is_the_last_test_questions(gsm8k_dir, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", str(gsm8k_dir))
    t4 = PROFILES["t4"]
    questions = watch.watch_dataset(t4)
    assert [q["index"] for q in questions] == list(range(1319 - t4.watch_questions, 1319))
    assert not {q["question"] for q in questions} & set(data.load_gsm8k("train", t4)["question"])


def test_off_and_bad_settings():
    assert watch.watch_callback(TINY.replace(watch_questions=0), None, None) is None
    with pytest.raises(ValueError, match="watch_every_steps must be 1 or more"):
        watch.watch_callback(TINY.replace(watch_every_steps=0), None, None, questions=[])


def test_the_live_figure_draws_the_watch_beside_the_reward(artifacts):
    path = paths.profile_dir(TINY.name) / callbacks.METRICS_FILE
    for step in range(1, 5):
        callbacks.append_metric_rows(path, step, step / 10, {"reward": 1.0 + step / 10})
    for step in (0, 4):
        callbacks.append_metric_rows(path, step, step / 10, dict.fromkeys(watch.WATCH_METRICS, 0.5 - step / 10))
    long_rows = callbacks.read_metrics(path)
    assert list(long_rows.columns) == ["step", "epoch", "name", "value", "wall_time"]
    table = metrics_table(long_rows)
    assert table.loc[4, "eval/strict_accuracy"] == pytest.approx(0.1) and table.loc[4, "reward"] == pytest.approx(1.4)
    titles = [ax.get_title() for ax in plot_training_curves(table).axes]
    assert titles[:2] == ["total reward (weighted)", "held-out accuracy (greedy)"]


@pytest.fixture(scope="module")
def warm_tiny_dir():
    """The tiny model as the tiny profile builds it, in the session's artifacts folder (notebook 04 reuses it)."""
    return tiny.ensure_tiny_model(spec=tiny.TinySpec(warm_start_steps=TINY.warm_start_steps))


def _train(profile, model_dir, callback_profile=None):
    """A short train_grpo run; the watch comes only from `callback_profile` (off in the profile train_grpo sees)."""
    with mock.patch.object(modeling, "model_path", lambda p: str(model_dir)):
        model, tokenizer = modeling.load_model(profile)
    before = None
    extra = []
    if callback_profile is not None:
        questions = watch.watch_dataset(callback_profile)
        settings = SamplingSettings(max_new_tokens=profile.eval_max_new_tokens, seed=profile.seed)
        before = evaluation.summarize(evaluation.evaluate_gsm8k(model, tokenizer, questions, settings))
        extra = [watch.watch_callback(callback_profile, model, tokenizer)]
    result = training.train_grpo(model, tokenizer, data.load_gsm8k("train", profile),
                                 profile.replace(watch_questions=0), redraw_every_s=1e9, callbacks=extra)
    return model, tokenizer, result, before


@pytest.mark.slow
def test_watch_rows_on_a_short_tiny_run(artifacts, warm_tiny_dir):
    profile = TINY.replace(max_steps=5, save_steps=5, watch_questions=16, watch_every_steps=2)
    model, tokenizer, result, before = _train(profile, warm_tiny_dir, callback_profile=profile)
    rows = callbacks.read_metrics(result.metrics_csv)
    watched = rows[rows["name"].isin(watch.WATCH_METRICS)]
    assert sorted(set(watched["step"])) == watch.watch_steps(profile) == [0, 2, 4, 5]
    assert len(watched) == 4 * len(watch.WATCH_METRICS) and watched["value"].between(0, 1).all()
    assert set(rows.loc[rows["name"] == watch.WATCH_SECONDS, "step"]) == {0, 2, 4, 5}
    table = metrics_table(rows)
    # Step 0 is the model before training, step 5 the trained one, each scored exactly as notebook 05 scores.
    questions = watch.watch_dataset(profile)
    settings = SamplingSettings(max_new_tokens=profile.eval_max_new_tokens, seed=profile.seed)
    after = evaluation.summarize(evaluation.evaluate_gsm8k(model, tokenizer, questions, settings))
    for metric in evaluation.RATE_METRICS:
        assert table.loc[0, f"eval/{metric}"] == before[metric]
        assert table.loc[5, f"eval/{metric}"] == after[metric]
    assert 0 < before["format_rate"] < 1  # the warm-started model: the scores are not all-or-nothing
    assert sorted(set(rows.loc[rows["name"] == "reward", "step"])) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_the_watch_leaves_training_unchanged(artifacts, warm_tiny_dir, monkeypatch):
    """Same seed, with and without the watch: every logged reward and loss is identical."""
    profile = TINY.replace(max_steps=3, save_steps=3, watch_questions=8, watch_every_steps=1)
    *_, watched, _ = _train(profile, warm_tiny_dir, callback_profile=profile)
    monkeypatch.setenv("GRPO_ARTIFACTS", str(artifacts.parent / "without-watch"))
    *_, plain, _ = _train(profile, warm_tiny_dir)

    def logged(result):
        rows = callbacks.read_metrics(result.metrics_csv)
        return rows[rows["name"].isin(["reward", "loss", "completions/mean_length"])][["step", "name", "value"]]

    assert logged(watched).reset_index(drop=True).equals(logged(plain).reset_index(drop=True))
    assert (callbacks.read_metrics(watched.metrics_csv)["name"] == "eval/strict_accuracy").sum() == 4

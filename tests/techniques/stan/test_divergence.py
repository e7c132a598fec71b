"""STAN training that reaches NaN or infinity stops with the graph of its last finite epoch, and a
Hyperband trial that diverges scores the worst error."""

import pytest
import torch

from sparsify_cnn.errors import TrainingDiverged
from sparsify_cnn.techniques.stan import hyperband
from sparsify_cnn.techniques.stan.conv import StanConv
from sparsify_cnn.techniques.stan.rewrite import StanConfig
from sparsify_cnn.techniques.stan.trainer import TrainSetup, fit


def _setup(epochs: int) -> TrainSetup:
    # One step per epoch (90 training images): lr 1e10 leaves finite weights after epoch 1 and
    # NaN outputs after epoch 2. Step 1 runs at the full lr whatever the epochs, so a 1-epoch
    # run is the oracle for the weights of epoch 1.
    stan = StanConfig("stan-lite", theta=0.05, pre_epochs=1, period=1)
    return TrainSetup(epochs=epochs, batch_size=90, lr=1e10, seed=1, stan=stan)


def test_diverged_stan_training_returns_the_graph_of_its_last_finite_epoch(toy_graph, toy_data):
    with pytest.raises(TrainingDiverged) as caught:
        fit(toy_graph, toy_data, _setup(epochs=3))
    error = caught.value
    assert (error.epoch, error.step, error.kept_epoch) == (2, 1, 1)
    assert "its calibration outputs are NaN or infinite" in str(error) and "try a smaller learning rate" in str(error)
    partial = error.result
    assert [e.epoch for e in partial.epochs] == [1]
    assert not any(isinstance(m, StanConv) for m in partial.graph_module.modules())
    oracle = fit(toy_graph, toy_data, _setup(epochs=1)).graph_module.state_dict()
    kept = partial.graph_module.state_dict()
    assert list(kept) == list(oracle)
    for name, value in kept.items():
        assert value.isfinite().all() and torch.equal(value, oracle[name]), name


def test_a_diverging_hyperband_trial_scores_the_worst_error(tmp_path, toy_data, monkeypatch):
    import optuna

    # Momentum above 1 and a huge lr: the weights grow without bound (argmax-0 scoring gave 2/3).
    params = (hyperband.Param("lr", "log", 1e9, 1e10), hyperband.Param("momentum", "linear", 4, 5))
    monkeypatch.setitem(hyperband.PRESETS, "absurd", hyperband.Preset("absurd", "test", params, optimizer="sgd"))
    config = hyperband.StudyConfig("absurd", str(tmp_path / "study.db"), trials=2, max_epochs=3, seed=0)
    result = hyperband.run_study("mlp", toy_data, config)
    assert result.best_error == 1.0
    trials = optuna.load_study(study_name="mlp-absurd-toy", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert [t.value for t in trials] == [1.0, 1.0] and all(t.user_attrs["diverged_at"] >= 1 for t in trials)

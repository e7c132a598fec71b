import pytest
import torch

from sparsify_cnn.errors import InputError
from sparsify_cnn.evaluate import evaluate
from sparsify_cnn.techniques.stan.conv import StanConv
from sparsify_cnn.techniques.stan.entry import estimate_bytes
from sparsify_cnn.techniques.stan.rewrite import StanConfig
from sparsify_cnn.techniques.stan.trainer import TrainSetup, fit


def _setup(epochs=5, **stan):
    return TrainSetup(epochs=epochs, batch_size=32, lr=0.05, seed=1, stan=StanConfig(**stan))


def test_stan_training_follows_the_schedule_and_reports_coverage_and_times(toy_graph, toy_data):
    result = fit(toy_graph, toy_data, _setup(variant="stan-lite", theta=0.05, pre_epochs=1, period=2))
    assert [e.kind for e in result.epochs] == ["dense", "build", "skip", "skip", "build"]
    assert result.entry_bytes == estimate_bytes({"conv1": (8, 12, 12), "conv2": (8, 6, 6)}, 90, "stan-lite")
    for e in result.epochs:
        assert set(e.layers) == {"conv1", "conv2"}
        for name, layer in e.layers.items():
            if e.kind == "dense":
                assert layer["coverage"] == 0 and layer["entry_s"] == 0 and layer["skip_s"] == 0
            elif e.kind == "build":
                assert 0 < layer["coverage"] < 1 and layer["entry_s"] > 0 and layer["theta"] == pytest.approx(0.05)
            else:
                built = next(b for b in reversed(result.epochs[: e.epoch - 1]) if b.kind == "build")
                assert layer["coverage"] == built.layers[name]["coverage"]  # E from the last build
                assert layer["skip_s"] > 0 and layer["forward_s"] == 0 and layer["computed"] <= 1
            assert layer["backward_s"] > 0
    assert result.outputs == {"conv1": 8 * 12 * 12, "conv2": 8 * 6 * 6}
    builds = [e for e in result.epochs if e.kind == "build"]
    expected = sum(e.layers[n]["coverage"] * k for e in builds for n, k in result.outputs.items()) / (2 * 1440)
    assert result.coverage() == pytest.approx(expected) and 0 < result.coverage("computed") <= 1
    times = result.layer_times()
    assert set(times) == {"conv1", "conv2"} and all(t.t_f > 0 and t.t_b > 0 for t in times.values())
    assert result.predicted_speedup() > 0 and result.measured_speedup() > 0
    assert not any(isinstance(m, StanConv) for m in result.graph_module.modules())
    assert evaluate(result.graph_module, toy_data.test).value > 0.6  # it learns (chance: 1/3)
    report = result.to_dict()
    assert report["speedup"]["predicted"] == result.predicted_speedup() and len(report["epochs"]) == 5


def test_skipping_epochs_replay_each_samples_own_entries(toy_graph, toy_data):
    """End to end: the data is shuffled every epoch; in a skipping epoch every covered output of
    a sample is the value stored for that sample in the entry-matrix epoch."""
    seen = {"build": {}, "skip": {}}

    import sparsify_cnn.techniques.stan.conv as conv_module

    original = conv_module.StanConv.run

    def run(self, x, weight, bias):
        out = original(self, x, weight, bias)
        if self.layer_name == "conv2" and self.context.kind in seen:
            for i, sample in enumerate(self.context.ids.tolist()):
                seen[self.context.kind][sample] = out[i].detach().clone()
        return out

    conv_module.StanConv.run = run
    try:
        fit(toy_graph, toy_data, TrainSetup(epochs=2, batch_size=16, seed=2, stan=StanConfig("stan", theta=0.0)))
    finally:
        conv_module.StanConv.run = original
    assert set(seen["build"]) == set(seen["skip"]) == set(range(len(toy_data.train)))
    replayed = 0
    for sample, built in seen["build"].items():
        covered = built.half() <= 0
        skipped = seen["skip"][sample]
        assert torch.equal(skipped[covered], built.half().float()[covered])
        replayed += int(covered.sum())
    assert replayed > 0


def test_entry_memory_is_checked_before_training(toy_graph, toy_data):
    needed = estimate_bytes({"conv1": (8, 12, 12), "conv2": (8, 6, 6)}, 90, "stan")
    with pytest.raises(InputError, match=f"needs .* \\({needed:,} bytes: 90 samples x 1,440 outputs of conv1, conv2"):
        fit(toy_graph, toy_data, _setup(1, variant="stan"), max_entry_memory=needed - 1)
    result = fit(toy_graph, toy_data, _setup(1, variant="stan", layers=("conv2",)), max_entry_memory=needed)
    assert set(result.epochs[0].layers) == {"conv2"}


def test_training_is_deterministic_reports_its_steps_and_baselines_rewrite_their_layers(toy_graph, toy_data):
    setup = TrainSetup(epochs=2, batch_size=32, seed=3, conv_dropout=0.5, meprop_k=4, dropout_layers=("conv2",),
                       stan=StanConfig("stan-lite", theta=None, coverage=0.5, layers=("conv1",)))  # fmt: skip
    calls = []
    first = fit(toy_graph, toy_data, setup, progress=lambda *args, **extra: calls.append(args))
    second = fit(toy_graph, toy_data, setup)  # silent: the same weights
    steps = -(-len(toy_data.train) // 32)
    assert calls[0] == ("training", "epoch 1 of 2", 0, 2 * steps) and calls[-1][2:] == (2 * steps, 2 * steps)
    assert [done for _, _, done, _ in calls] == list(range(2 * steps + 1))
    assert first.rewrites == {"conv_dropout": {"conv2": "dropout_conv2"}, "meprop": {"fc1": "meprop_fc1"},
                              "stan": {"conv1": "stan_conv1"}}  # fmt: skip
    for a, b in zip(first.graph_module.state_dict().values(), second.graph_module.state_dict().values()):
        assert torch.equal(a, b)
    assert first.epochs[0].layers["conv1"]["coverage"] == pytest.approx(0.5, abs=0.02)


def test_layer_weight_decay_must_match_a_layer(toy_graph, toy_data):
    with pytest.raises(InputError, match="conv9 matches no layer; the layers are conv1, conv2, fc1, fc2"):
        fit(toy_graph, toy_data, TrainSetup(epochs=1, layer_weight_decay={"conv9": 0.1}))


def test_setup_round_trip_and_validation():
    setup = TrainSetup(epochs=3, optimizer="adam", layer_weight_decay={"conv*": 0.01}, lrn={"alpha": 1e-4},
                       model_options={"hidden": 64}, stan=StanConfig("stan", theta=0.5))  # fmt: skip
    assert TrainSetup.from_dict(setup.to_dict()) == setup
    with pytest.raises(InputError, match="unknown training settings speed"):
        TrainSetup.from_dict({"speed": 3})
    with pytest.raises(InputError, match="unknown optimizer"):
        TrainSetup(optimizer="rmsprop")


@pytest.mark.parametrize("variant", ["stan", "stan-lite"])
def test_an_interrupted_fit_resumes_to_identical_weights(toy_graph, toy_data, tmp_path, variant, stop_after):
    # Dropout (global RNG), a coverage quantile (STAN's generator) and skipping epochs (E) all
    # carry state across the interruption.
    setup = TrainSetup(epochs=4, batch_size=32, seed=2, conv_dropout=0.3, dropout_layers=("conv2",),
                       stan=StanConfig(variant, theta=None, coverage=0.5, pre_epochs=1, period=1,
                                       kernel="dense", layers=("conv1",)))  # fmt: skip
    straight = fit(toy_graph, toy_data, setup)
    path = tmp_path / "fit.ckpt"

    with pytest.raises(stop_after.error):
        fit(toy_graph, toy_data, setup, on_epoch=stop_after(2), checkpoint=path)
    seen = []
    resumed = fit(toy_graph, toy_data, setup, on_epoch=seen.append, checkpoint=path)
    assert resumed.resumed_from == 2 and [r.epoch for r in seen] == [3, 4]
    assert [(r.kind, r.loss, r.calib) for r in resumed.epochs] == [(r.kind, r.loss, r.calib) for r in straight.epochs]
    for (name, a), b in zip(straight.graph_module.state_dict().items(), resumed.graph_module.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(InputError, match="written by another run \\(other config\\); remove it or rerun with --no-"):
        fit(toy_graph, toy_data, TrainSetup(epochs=4, batch_size=32, seed=3), checkpoint=path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(InputError, match="unreadable .*--no-resume"):
        fit(toy_graph, toy_data, setup, checkpoint=path)

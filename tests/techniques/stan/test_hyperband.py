import json

import pytest

from sparsify_cnn import models
from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.stan.hyperband import (
    BATCH_SIZE,
    PRESETS,
    StudyConfig,
    read_config,
    run_study,
    setup_for,
    write_config,
)
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.layers import find_layers


def _layers(name):
    entry = models.get_entry(name)
    shape = (3, 32, 32) if name == "resnet18" else entry.input_shape
    gm = capture(models.build(name), (1, *shape)).graph_module
    return {kind: [layer.name for layer in find_layers(gm) if layer.kind == kind] for kind in ("conv", "linear")}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_on_its_zoo_model(name):
    preset = PRESETS[name]
    values = {p.target: (p.low + p.high) / 2 for p in preset.params}
    model = "lenet_caffe" if name == "lenet" else name
    setup = setup_for(preset, values, _layers(model), epochs=3, seed=0)
    assert setup.batch_size == BATCH_SIZE == 100 and setup.seed == 0 and setup.epochs == 3
    searched = {p.target for p in preset.params}
    if "conv_l2" in searched:
        assert set(setup.layer_weight_decay) >= set(_layers(model)["conv"])
    if name == "lenet":
        assert set(setup.layer_weight_decay) == {"conv1", "conv2"} and setup.momentum == values["momentum"]
    if name == "cq":
        assert setup.layer_weight_decay["ip2"] == values["fc2_l2"]
    if name == "alexlrn":
        assert setup.lrn == {"alpha": values["lrn_scale"], "beta": values["lrn_power"]}
    if name == "mlp":
        assert setup.meprop_k == int(values["top_k"]) and setup.model_options["hidden"] == int(values["hidden"])
    if name == "resnet18":
        assert setup.optimizer == "adam" and setup.classifier_dropout == values["classifier_dropout"]


def test_the_seeds_ranges():
    cq = {p.target: p for p in PRESETS["cq"].params}
    assert set(cq) == {"lr", "conv_l2", "fc1_l2", "fc2_l2"}
    assert all(p.scale == "log" and (p.low, p.high) == (5e-5, 5) for p in cq.values())
    mlp = {p.target: p for p in PRESETS["mlp"].params}
    assert (mlp["hidden"].low, mlp["hidden"].high, mlp["top_k"].high) == (100, 8192, 100)
    assert PRESETS["lenet"].params[3].low == 0.001 and PRESETS["alexlrn"].params[3].low == 5e-6


def test_a_study_resumes_and_reruns_an_interrupted_trial(tmp_path, toy_data):
    import optuna

    storage = tmp_path / "study.db"
    config = StudyConfig("mlp", str(storage), trials=2, max_epochs=2, seed=5)
    first = run_study("mlp", toy_data, config)
    assert first.resumed == 0 and sum(first.counts.values()) == 2

    # Interrupt a trial: it is left RUNNING in the storage, as after a kill.
    study = optuna.load_study(study_name="mlp-mlp-toy", storage=f"sqlite:///{storage}")
    before = [(t.number, t.params, t.value) for t in study.get_trials()]
    distributions = {t: d for t, d in study.get_trials()[0].distributions.items()}
    stale = study.ask(distributions)

    calls = []
    second = run_study("mlp", toy_data, StudyConfig("mlp", str(storage), trials=4, max_epochs=2, seed=5),
                       progress=lambda phase, item, done, total, **extra: calls.append((phase, item, done, total, extra)))  # fmt: skip
    # The study's count goes from the 2 trials it found to 4; each trial's steps end their phase.
    study_calls = [(item, done, total) for phase, item, done, total, _ in calls if phase == "hyperband"]
    assert study_calls[0] == ("2 trials done", 2, 4) and study_calls[-1][1:] == (4, 4)
    last_call = {phase: (item, done, total, extra) for phase, item, done, total, extra in calls if phase != "hyperband"}
    assert sorted(last_call) == ["trial 3", "trial 4"]  # the interrupted trial 2 re-runs as 3
    for item, done, total, extra in last_call.values():
        assert (done == total and extra["unit"] == "steps") or (item == "pruned" and extra["end"])
    assert second.resumed == 3 and second.rerun == [stale.number]
    trials = optuna.load_study(study_name="mlp-mlp-toy", storage=f"sqlite:///{storage}").get_trials()
    assert [(t.number, t.params, t.value) for t in trials[:2]] == before  # kept, not run again
    assert trials[stale.number].state.name == "FAIL"
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == stale.number)
    assert retry.params == trials[stale.number].params and retry.state.is_finished()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4

    path = tmp_path / "best.json"
    write_config(path, "mlp", second, config, toy_data)
    document = json.loads(path.read_text())
    assert document["model"] == "zoo:mlp" and document["tuned"]["calib_error"] == second.best_error
    setup = read_config(path)
    assert setup == second.best_setup and setup.batch_size == 100 and setup.optimizer == "adam"

    with pytest.raises(InputError, match="made with another max_epochs"):
        run_study("mlp", toy_data, StudyConfig("mlp", str(storage), trials=4, max_epochs=3, seed=5))


def test_a_resumed_study_draws_and_prunes_as_an_uninterrupted_one(tmp_path, toy_data):
    import optuna

    from sparsify_cnn.techniques.stan.replay import SlotSampler

    def history(storage):
        trials = optuna.load_study(study_name="mlp-mlp-toy", storage=f"sqlite:///{storage}").get_trials()
        return [(t.params, t.state.name, t.intermediate_values, t.value) for t in trials if t.state.name != "FAIL"]

    straight = tmp_path / "straight.db"
    run_study("mlp", toy_data, StudyConfig("mlp", str(straight), trials=5, max_epochs=3, seed=7))

    killed = tmp_path / "killed.db"
    run_study("mlp", toy_data, StudyConfig("mlp", str(killed), trials=2, max_epochs=3, seed=7))
    # As after a kill -9 mid-trial: a trial left RUNNING, its first point drawn, one epoch reported.
    study = optuna.load_study(study_name="mlp-mlp-toy", storage=f"sqlite:///{killed}", sampler=SlotSampler(7))
    stale = study.ask()
    stale.set_user_attr("slot", 2)  # what run_study's objective does first
    stale.suggest_int("hidden", 100, 8192)
    stale.report(0.5, 1)
    resumed = run_study("mlp", toy_data, StudyConfig("mlp", str(killed), trials=5, max_epochs=3, seed=7))
    assert resumed.rerun == [stale.number]
    assert history(killed) == history(straight)


def test_workers_sharing_a_storage_run_one_study_with_the_points_of_one_process(tmp_path):
    """Two `sparsify tune-hparams` processes on one database URL: one study, the trials asked
    for in all (not each), every trial's point the one a single process draws in its slot."""
    import subprocess
    import sys

    import optuna

    def command(storage: str, out: str) -> list[str]:
        return [sys.executable, "-m", "sparsify_cnn", "tune-hparams", "zoo:mlp", "--preset", "mlp", "--data", "digits",
                "--trials", "4", "--max-epochs", "1", "--seed", "3", "--storage", storage, "--out", str(tmp_path / out)]  # fmt: skip

    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [subprocess.Popen(command(shared, f"w{i}.json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]  # fmt: skip
    results = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), results
    assert (tmp_path / "w0.json").exists() and (tmp_path / "w1.json").exists()
    alone = subprocess.run(command(str(tmp_path / "alone.db"), "alone.json"), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr

    def points(storage: str) -> dict[int, dict]:
        trials = optuna.load_study(study_name="mlp-mlp-digits", storage=storage).get_trials()
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        return {t.user_attrs["slot"]: t.params for t in finished}

    together = points(shared)
    assert 4 <= len(together) <= 5  # a worker stops once the study has 4; the other's running trial ends
    one = points(f"sqlite:///{tmp_path / 'alone.db'}")
    assert len(one) == 4
    assert {slot: together[slot] for slot in one} == one


def test_a_shared_storage_hides_its_password_and_names_the_databases_it_takes():
    from sparsify_cnn.techniques.stan.hyperband import open_storage, shown

    assert shown("postgresql://me:secret@db.example/study") == "postgresql://me:***@db.example/study"
    with pytest.raises(InputError, match="use a database URL"):
        open_storage("redis://me:secret@host/0")
    with pytest.raises(InputError, match=r"cannot open the study storage 'postgresql://me:\*\*\*@127.0.0.1:1/x'") as caught:
        open_storage("postgresql://me:secret@127.0.0.1:1/x")
    assert "secret" not in str(caught.value)

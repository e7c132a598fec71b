"""Damaged checkpoints: a search checkpoint loads (and its search resumes) or is refused with
InputError; a training checkpoint resumes or is refused with InputError; never another exception."""

import copy
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsify_cnn import models
from sparsify_cnn.data import load_data
from sparsify_cnn.errors import InputError
from sparsify_cnn.search.checkpoint import SPATIAL_RECORD, STEP_RECORD, Checkpoint
from sparsify_cnn.techniques.perforation.masks import KEPT_FRACTIONS, kept_mask
from sparsify_cnn.techniques.perforation.rewrite import insert_perforated_convs, perforated_ops
from sparsify_cnn.techniques.perforation.search import CostModel, FixedMasks, GreedyRateSearch, RateSearchConfig
from sparsify_cnn.techniques.spatial.evaluator import Evaluator
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops
from sparsify_cnn.techniques.spatial.search import SearchConfig, SpatialSearch
from sparsify_cnn.training import TrainConfig, train
from sparsify_cnn.transform.capture import capture

IDENTITY = {"model": "lenet", "run": 1}
RECORDS = {"spatial": SPATIAL_RECORD, "perforation": STEP_RECORD}


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    data = load_data("digits", (1, 28, 28))
    return models.build("lenet", num_classes=10), data


def _perforation_search(model, data, store):
    gm = insert_perforated_convs(capture(model, (1, 1, 28, 28)).graph_module).graph_module
    masks = FixedMasks({name: [kept_mask("grid", op.out_hw, q) for q in KEPT_FRACTIONS]
                        for name, op in perforated_ops(gm).items()})  # fmt: skip
    config = RateSearchConfig(mask="grid", epsilon=None, speedup=1.5)
    return GreedyRateSearch(gm, data.calib.x[:64], data.calib.y[:64], masks, config, CostModel(gm), store).run()


@pytest.fixture(scope="module")
def checkpoints(lenet, tmp_path_factory):
    """Real checkpoint files of a tiny search of each technique, as text."""
    model, data = lenet
    folder = tmp_path_factory.mktemp("checkpoints")
    gm = insert_spatial_ops(capture(model, (1, 1, 28, 28)).graph_module).graph_module
    spatial = Checkpoint(folder / "spatial.json", IDENTITY, interval=0, record=SPATIAL_RECORD)
    evaluator = Evaluator(gm, data.calib.x[:32], data.calib.y[:32])
    SpatialSearch(evaluator, SearchConfig(mode="uniform_layer", epsilon=0.05, top_m=2), spatial).run()
    perforation = Checkpoint(folder / "perforation.json", IDENTITY, interval=0, record=STEP_RECORD)
    _perforation_search(model, data, perforation)
    spatial.flush(), perforation.flush()
    return {kind: (folder / f"{kind}.json").read_text() for kind in RECORDS}


def _load(raw: bytes, kind: str) -> Checkpoint | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.json"
        path.write_bytes(raw)
        try:
            return Checkpoint(path, IDENTITY, record=RECORDS[kind])
        except InputError:
            return None


@pytest.mark.parametrize("kind", list(RECORDS))
def test_damaged_search_checkpoints_load_or_are_refused(checkpoints, kind, damaged):
    assert _load(checkpoints[kind].encode(), kind).resumed > 0  # the undamaged one resumes

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        store = _load(data.draw(damaged(checkpoints[kind])), kind)
        for record in (store.records.values() if store else ()):  # what the searches rely on
            if kind == "spatial":
                accuracy, saved = record
                assert 0 <= accuracy <= 1 and abs(saved) < float("inf")
            elif record["layer"] is None:
                assert isinstance(record["reason"], str)
            else:
                assert {"ratio", "loss", "accuracy"} <= set(record)

    check()


def test_a_resumed_search_with_damaged_records_finishes_or_is_refused(lenet, checkpoints, damaged):
    model, data = lenet

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(drawn):
        store = _load(drawn.draw(damaged(checkpoints["perforation"])), "perforation")
        if store is not None:
            try:
                _perforation_search(model, data, store)
            except InputError:
                pass

    check()


@pytest.fixture(scope="module")
def train_checkpoint(lenet, tmp_path_factory):
    """A training checkpoint at the end of epoch 1, the initial model and the config that wrote it."""
    model, data = lenet
    initial = copy.deepcopy(model)
    config = TrainConfig(epochs=1, batch_size=256, seed=0)
    path = tmp_path_factory.mktemp("train") / "train.pt"
    train(copy.deepcopy(model), data, config, checkpoint=path)
    return path.read_bytes(), initial, config


def test_damaged_training_checkpoints_resume_or_are_refused(lenet, train_checkpoint):
    _, data = lenet
    good, initial, config = train_checkpoint

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(drawn):
        raw = bytearray(good)
        how = drawn.draw(st.sampled_from(["flip", "truncate", "zero", "insert"]))
        at = drawn.draw(st.integers(0, len(raw) - 1))
        if how == "flip":
            raw[at] ^= drawn.draw(st.integers(1, 255))
        elif how == "truncate":
            del raw[at:]
        elif how == "zero":
            end = at + drawn.draw(st.integers(1, 4096))
            raw[at:end] = bytes(len(raw[at:end]))
        else:
            raw[at:at] = drawn.draw(st.binary(min_size=1, max_size=64))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "train.pt"
            path.write_bytes(bytes(raw))
            try:
                result = train(copy.deepcopy(initial), data, config, checkpoint=path)
            except InputError:
                return
            assert result.resumed_from in (0, 1)

    check()

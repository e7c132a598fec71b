import json

import numpy as np
import pytest
import torch
from torch import nn

from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.runtime import load
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def _records(path):
    text = (path / "database_tuning_record.json").read_text()
    return [line for line in text.splitlines() if line.strip()]


def _tile_decisions(line: str) -> list | None:
    """The tile sizes a record's schedule sampled, when it is a default rule's (every sampled
    tile two loops: a register tile and its blocks; MetaSchedule's multi-level tiling splits
    spatial loops in four); else None."""
    trace = json.loads(line)[1][0]
    tiles = [inst for inst in trace[0] if inst[0] == "SamplePerfectTile"]
    if not tiles or any(inst[2][0] != 2 for inst in tiles):
        return None
    return [decision for _, decision in trace[1]]


def test_tuning_writes_records_that_a_second_compile_reuses(tmp_path, capfd):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()).eval()
    gm = capture(model, (1, 4, 8, 8)).graph_module
    records = tmp_path / "records"
    x = torch.randn(2, 4, 8, 8)
    first = compile_graph(gm, (1, 4, 8, 8), tmp_path / "a", check_inputs=x, tune_trials=2, records=records)
    assert first.relative_diff <= TOLERANCE
    tuned = _records(records)
    assert tuned  # measured schedules were stored
    # the conv's trial is the default rule's schedule, its tile sampled; no multi-level tiling
    assert "[INFO]" not in capfd.readouterr().out  # two design spaces, MetaSchedule's tables still silent
    (tiles,) = [_tile_decisions(line) for line in tuned if "SamplePerfectTile" in line]
    assert tiles and all(len(factors) == 2 for factors in tiles)  # (blocks, tile), sampled: not always the same
    second = compile_graph(gm, (1, 4, 8, 8), tmp_path / "b", check_inputs=x, tune_trials=2, records=records)
    assert _records(records) == tuned  # nothing tuned again: same shapes cost nothing
    assert second.manifest["tuning"] == {"trials": 2, "records": str(records), "measured_on": None}
    with torch.no_grad():
        expected = model(x[:1]).numpy()
    np.testing.assert_allclose(load(tmp_path / "b")(x[:1].numpy()), expected, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["check"]["relative_diff"] <= TOLERANCE


def test_cuda_targets_carry_the_limits_metaschedule_needs():
    import tvm

    from sparsify_cnn.codegen.target import target_spec

    spec = target_spec("cuda:sm_90")
    assert tvm.target.Target(spec).attrs["max_threads_per_block"] == 1024
    assert spec["max_shared_memory_per_block"] == 49152 and spec["thread_warp_size"] == 32


def test_kernels_written_with_their_schedule_are_not_tuned():
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from sparsify_cnn.codegen.exporting import export_static
    from sparsify_cnn.codegen.importer import import_program
    from sparsify_cnn.codegen.target import target_spec
    from sparsify_cnn.codegen.tuning import _scheduled
    from sparsify_cnn.ops.registry import custom_convert_map
    from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops, spatial_ops

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)).eval()
    gm = insert_spatial_ops(capture(model, (1, 2, 8, 8)).graph_module, SpatialConfig()).graph_module
    op = next(iter(spatial_ops(gm).values()))
    mask = torch.ones_like(op.mask)
    mask[:, 1::2, :] = False
    op.set_mask(mask)  # not all ones: lowered as the skipping kernel
    target = tvm.target.Target(target_spec("llvm"))
    with target:
        mod, _ = import_program(export_static(gm, (1, 2, 8, 8)), custom_convert_map())
        mod = relax.get_pipeline("zero")(relax.transform.DecomposeOpsForInference()(mod))
    tasks = ms.relax_integration.extract_tasks(mod, target)
    flags = {task.task_name: _scheduled(task) for task in tasks}
    assert any(flags.values()) and not all(flags.values())  # the Spatial kernel is; the linear is not


def test_a_tuned_model_with_hand_written_kernels_compiles_and_matches(tmp_path):
    # The Spatial kernel has no root block: the layout rewrite passes must leave such modules be.
    from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops, spatial_ops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    gm = insert_spatial_ops(capture(model, (1, 3, 8, 8)).graph_module, SpatialConfig()).graph_module
    for op in spatial_ops(gm).values():
        mask = torch.ones_like(op.mask)
        mask[:, 1::2, :] = False
        op.set_mask(mask)
    result = compile_graph(gm, (1, 3, 8, 8), tmp_path / "a", check_inputs=torch.randn(4, 3, 8, 8), tune_trials=2,
                           records=tmp_path / "records")  # fmt: skip
    assert result.relative_diff <= TOLERANCE


def test_unnamed_log_handlers_are_set_aside_while_metaschedule_configures_logging():
    # MetaSchedule's logging setup names every handler of its logger; an unnamed one (pytest's
    # capture handler, a user's) made the second tuning session of a process fail.
    import logging

    from sparsify_cnn.codegen.tuning import LOGGER, _unnamed_handlers_detached

    logger = logging.getLogger(LOGGER)
    unnamed, named = logging.NullHandler(), logging.NullHandler()
    named.set_name("mine")
    logger.addHandler(unnamed)
    logger.addHandler(named)
    try:
        with _unnamed_handlers_detached(logger):
            assert unnamed not in logger.handlers and named in logger.handlers
        assert unnamed in logger.handlers and named in logger.handlers
    finally:
        logger.removeHandler(unnamed)
        logger.removeHandler(named)


@pytest.mark.parametrize("record_faster", [False, True])
def test_a_record_slower_than_the_default_schedule_is_left_out(record_faster):
    import tvm

    from sparsify_cnn.codegen.build import STEPS, _steps
    from sparsify_cnn.codegen.cpu_schedules import default_cpu_schedule
    from sparsify_cnn.codegen.exporting import export_static
    from sparsify_cnn.codegen.importer import import_program
    from sparsify_cnn.codegen.target import target_spec
    from sparsify_cnn.codegen.tuning import _with_originals, keep_faster
    from sparsify_cnn.ops.registry import custom_convert_map

    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    shape = (1, 8, 6, 6)
    target = tvm.target.Target(target_spec("llvm"))
    with target:
        original, _ = import_program(export_static(capture(model, shape).graph_module, shape), custom_convert_map())
    steps = _steps(target, 0, None, None)
    for name in STEPS[: STEPS.index("tune")]:
        original = steps[name](original)
    with target:  # stands in for tuning records: every kernel scheduled
        tuned = default_cpu_schedule()(original.clone())  # the pass updates the module it is given
    records = [f for f in tuned.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and f.attrs
               and f.attrs.get("tirx.is_scheduled")]  # fmt: skip
    assert records

    def seconds(func, _target):
        is_record = any(func.same_as(r) for r in records)
        return (1.0 if record_faster else 2.0) if is_record else 1.5

    verdicts = {}
    slower = keep_faster(original, tuned, target, seconds, verdicts)

    def untimed(func, _target):
        raise AssertionError("a kernel with a verdict is timed again")

    assert keep_faster(original, tuned, target, untimed, verdicts) == slower  # the next compile decides the same
    names = {gv.name_hint for gv, f in tuned.functions.items() if any(f.same_as(r) for r in records)}
    assert slower == (set() if record_faster else names)
    restored = _with_originals(tuned, original, slower)
    for gvar in restored.functions:
        expected = original[gvar] if gvar.name_hint in slower else tuned[gvar]
        assert restored[gvar].same_as(expected)  # the rest as tuning left it
    assert all(any(f.same_as(r) for r in records) for f in tuned.functions.values() if f.attrs
               and f.attrs.get("tirx.is_scheduled"))  # fmt: skip - tuned itself unchanged


def test_schedule_rules_no_function_implements_are_dropped_before_tuning_without_a_warning(capfd):
    """TOPI's max pool asks for ``meta_schedule.pool_max``; no CPU function implements it, so
    MetaSchedule would drop it with a warning per block: it is dropped first, quietly."""
    import tvm
    from tvm import relax

    from sparsify_cnn.codegen.tuning import without_unknown_rules

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.nn.max_pool2d(x, 2, 2)))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())

    def rules(module):
        return [str(b.annotations["schedule_rule"]) for f in module.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
                for b in _blocks(f) if "schedule_rule" in b.annotations]  # fmt: skip

    assert rules(mod) == ["meta_schedule.pool_max"]
    assert rules(without_unknown_rules(mod, tvm.target.Target("llvm"))) == []
    # A target whose key has the function keeps it (a key of its own: the function stays registered).
    tvm.register_global_func("meta_schedule.sparsify_test.meta_schedule.pool_max", lambda sch, block: [sch],
                             override=True)  # fmt: skip
    target = tvm.target.Target({"kind": "llvm", "keys": ["sparsify_test"]})
    assert rules(without_unknown_rules(mod, target)) == ["meta_schedule.pool_max"]
    assert "Unknown schedule rule" not in capfd.readouterr().err


def _blocks(func):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    return [sch.get(block) for block in sch.get_child_blocks(sch.get_sblock("root"))]

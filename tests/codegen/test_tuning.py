import json

import numpy as np
import torch
from torch import nn

from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.runtime import load
from sparsify_cnn.transform.capture import capture


def _records(path):
    text = (path / "database_tuning_record.json").read_text()
    return [line for line in text.splitlines() if line.strip()]


def test_tuning_writes_records_that_a_second_compile_reuses(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()).eval()
    gm = capture(model, (1, 4, 8, 8)).graph_module
    records = tmp_path / "records"
    x = torch.randn(2, 4, 8, 8)
    first = compile_graph(gm, (1, 4, 8, 8), tmp_path / "a", check_inputs=x, tune_trials=2, records=records)
    assert first.relative_diff <= TOLERANCE
    tuned = _records(records)
    assert tuned  # measured schedules were stored
    second = compile_graph(gm, (1, 4, 8, 8), tmp_path / "b", check_inputs=x, tune_trials=2, records=records)
    assert _records(records) == tuned  # nothing tuned again: same shapes cost nothing
    assert second.manifest["tuning"] == {"trials": 2, "records": str(records)}
    with torch.no_grad():
        expected = model(x[:1]).numpy()
    np.testing.assert_allclose(load(tmp_path / "b")(x[:1].numpy()), expected, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["check"]["relative_diff"] <= TOLERANCE

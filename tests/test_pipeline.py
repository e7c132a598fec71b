import numpy as np
import pytest

from sparsify_cnn.errors import InputError
from sparsify_cnn.pipeline import prepare


def test_zoo_model_fits_the_data_classes_channels_and_size(tmp_path):
    np.savez(tmp_path / "three.npz", x=np.zeros((12, 3, 20, 20), np.float32), y=np.arange(12) % 3)
    prepared = prepare("zoo:lenet", data=str(tmp_path / "three.npz"))
    assert prepared.captured.input_shape == (1, 3, 20, 20)
    assert prepared.num_outputs == 3
    assert prepared.loaded.metadata["num_classes"] == 3


def test_input_shape_resizes_builtin_data_and_sets_the_batch():
    prepared = prepare("zoo:cq", data="digits", input_shape=(4, 1, 28, 28))
    assert prepared.captured.input_shape == (4, 1, 28, 28)
    assert prepared.data.input_shape == (1, 28, 28)
    assert prepared.num_outputs == 10


def test_unknown_input_shape(model_files):
    with pytest.raises(InputError, match="input shape of .* is unknown: pass --input-shape"):
        prepare(str(model_files["pickle"]), trust_pickle=True)
    with pytest.raises(InputError, match="4 numbers"):
        prepare("zoo:lenet", input_shape=(1, 28, 28))

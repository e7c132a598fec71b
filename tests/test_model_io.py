import json
import zipfile

import pytest
import torch

from sparsify_cnn.errors import ModelLoadError
from sparsify_cnn.model_io import load_model

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_zoo_name_builds_the_entry():
    loaded = load_model("zoo:lenet")
    assert loaded.format == "zoo"
    assert loaded.input_shape == (1, 28, 28)
    assert loaded.module(X).shape == (4, 10)


def test_export_program_round_trips_with_metadata_and_dynamic_batch(model_files, trained_lenet):
    loaded = load_model(str(model_files["pt2"]))
    assert loaded.format == "export"
    assert loaded.input_shape == (1, 28, 28)
    assert loaded.metadata["zoo"] == "lenet"
    torch.testing.assert_close(loaded.module(X), trained_lenet(X))
    assert loaded.module(X[:1]).shape == (1, 10)  # batch dimension stays dynamic


@pytest.mark.parametrize("kind", ["state_dict", "checkpoint"])
def test_state_dict_with_zoo_arch(model_files, trained_lenet, kind):
    loaded = load_model(str(model_files[kind]), arch="zoo:lenet")
    assert loaded.format == "state_dict"
    assert loaded.input_shape == (1, 28, 28)
    torch.testing.assert_close(loaded.module(X), trained_lenet(X))


def test_state_dict_with_importable_factory(model_files, trained_lenet, tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "from sparsify_cnn import models\n\ndef build():\n    return models.build('lenet')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model(str(model_files["state_dict"]), arch="mynets:build")
    torch.testing.assert_close(loaded.module(X), trained_lenet(X))
    assert loaded.input_shape is None  # a factory says nothing of its input


def test_factory_takes_the_state_dicts_class_count(model_files, trained_lenet, tmp_path, monkeypatch):
    """torchvision's and timm's factories build 1000 classes unless told: a 10-class state dict
    rebuilds the model with num_classes=10 instead of failing on the classifier's size."""
    (tmp_path / "manyclasses.py").write_text(
        "from sparsify_cnn import models\n\n"
        "def build(num_classes=1000):\n    return models.build('lenet', num_classes=num_classes)\n\n"
        "def fixed():\n    return models.build('lenet', num_classes=1000)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model(str(model_files["state_dict"]), arch="manyclasses:build")
    torch.testing.assert_close(loaded.module(X), trained_lenet(X))
    assert loaded.metadata["num_classes"] == 10
    with pytest.raises(ModelLoadError, match="size mismatch for ip2.weight"):
        load_model(str(model_files["state_dict"]), arch="manyclasses:fixed")


def test_pickled_module_loads_only_when_trusted(model_files, trained_lenet):
    with pytest.raises(ModelLoadError, match="--trust-pickle") as error:
        load_model(str(model_files["pickle"]))
    assert "runs code" in str(error.value) and "lenet_module.pt" in str(error.value)
    loaded = load_model(str(model_files["pickle"]), trust_pickle=True)
    assert loaded.format == "pickle"
    torch.testing.assert_close(loaded.module(X), trained_lenet(X))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("torchscript", "is a TorchScript archive"),
        ("tensor", "holds a tensor, not a model"),
        ("empty", "is empty"),
        ("corrupt", "is not a readable PyTorch file"),
        ("truncated", "not a readable"),
        ("state_dict", "holds a state dict; name its architecture with --arch"),
    ],
)
def test_bad_model_files_get_one_line_errors(model_files, kind, message):
    with pytest.raises(ModelLoadError, match=message) as error:
        load_model(str(model_files[kind]))
    text = str(error.value)
    assert "\n" not in text
    assert model_files[kind].name in text


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt2"))
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(str(tmp_path))


def test_unknown_zoo_name_lists_candidates():
    with pytest.raises(ModelLoadError, match="unknown zoo model 'lenett'.*lenet"):
        load_model("zoo:lenett")


def test_arch_errors(model_files):
    with pytest.raises(ModelLoadError, match="not of the form"):
        load_model(str(model_files["state_dict"]), arch="justamodule")
    with pytest.raises(ModelLoadError, match="cannot import --arch 'no_such_module_xyz:f'"):
        load_model(str(model_files["state_dict"]), arch="no_such_module_xyz:f")
    with pytest.raises(ModelLoadError, match="does not fit --arch zoo:cq: missing key.*conv3.weight.*size mismatch for conv1.weight"):
        load_model(str(model_files["state_dict"]), arch="zoo:cq")
    with pytest.raises(ModelLoadError, match="does not fit --arch zoo:mlp: missing key.*unexpected key.*conv1"):
        load_model(str(model_files["state_dict"]), arch="zoo:mlp")


def test_export_program_with_pickled_payload_is_refused(model_files, tmp_path):
    # Rewrite the weights config of a real program to declare a pickled payload.
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(model_files["pt2"]) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError, match="carries pickled objects.*--trust-pickle"):
        load_model(str(tampered))


def test_export_with_a_static_batch_of_one_takes_batches(tmp_path, trained_lenet):
    """What users do: torch.export.export(model, (one_image,)) specialises the batch to 1."""
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(trained_lenet, (torch.zeros(1, 1, 28, 28),)), str(path))
    loaded = load_model(str(path))
    assert loaded.input_shape == (1, 28, 28)
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), trained_lenet(x))


def test_static_export_that_mixes_images_is_refused_in_one_line(tmp_path):
    class SubtractsBatchMean(torch.nn.Module):
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    path = tmp_path / "mixes.pt2"
    torch.export.save(torch.export.export(SubtractsBatchMean(), (torch.zeros(1, 1, 8, 8),)), str(path))
    with pytest.raises(ModelLoadError, match="static batch of 1.*Dim.DYNAMIC") as error:
        load_model(str(path))
    assert "\n" not in str(error.value)


def test_state_dict_keeps_module_versions(tmp_path, monkeypatch):
    """load_state_dict hands each module the version saved with it (torchvision's MNASNet
    refuses a state dict without one): the loader must keep the state dict's metadata."""
    (tmp_path / "versioned.py").write_text(
        "import torch\n\n"
        "class Versioned(torch.nn.Linear):\n"
        "    _version = 2\n\n"
        "    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):\n"
        "        if local_metadata.get('version') != 2:\n"
        "            raise ValueError(f\"version should be 2, got {local_metadata.get('version')}\")\n"
        "        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)\n\n"
        "def build():\n    return torch.nn.Sequential(Versioned(4, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import versioned

    torch.save(versioned.build().state_dict(), tmp_path / "weights.pt")
    loaded = load_model(str(tmp_path / "weights.pt"), arch="versioned:build")
    assert loaded.module[0].weight.shape == (3, 4)

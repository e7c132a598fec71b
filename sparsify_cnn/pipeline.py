"""The front of every job: load a model, settle its input shape, load the data to fit it, and
capture the model as a graph with shapes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import models
from .data import Dataset, load_data
from .errors import InputError
from .model_io import LoadedModel, load_model
from .transform.capture import Captured, capture
from .transform.layers import output_shape


@dataclass
class Prepared:
    """A loaded model, its captured graph, and the data (if any) it will be evaluated on."""

    loaded: LoadedModel
    captured: Captured
    data: Dataset | None

    @property
    def num_outputs(self) -> int | None:
        """Size of the model output's last dimension (its classes, for a classifier)."""
        shape = output_shape(self.captured.graph_module)
        return shape[-1] if shape else None


def prepare(
    model: str,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    input_shape: Sequence[int] | None = None,
    data: str | None = None,
    leaf_modules: Iterable[str] = (),
    capture_method: str = "auto",
    seed: int = 0,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Prepared:
    """Load ``model`` (a path or ``zoo:NAME``), load ``data`` to fit it, and capture it.

    The input shape comes from ``input_shape`` (N, C, H, W), else from the model file (for a
    zoo model: from the data, else its default), else from the data. ``normalize`` (mean, std)
    maps the data's images to ``(x - mean) / std``. Example::

        prepared = prepare("zoo:lenet", data="digits")
        prepared.captured.input_shape  # (1, 1, 28, 28)
    """
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    shape = tuple(input_shape) if input_shape is not None else None
    if shape is not None and len(shape) != 4:
        raise InputError(f"input shape must be N,C,H,W (4 numbers), got {','.join(map(str, shape))}")
    image_shape = shape[1:] if shape else loaded.input_shape
    dataset = load_data(data, image_shape, seed=seed, normalize=normalize) if data is not None else None
    if dataset is not None and loaded.format == "zoo" and shape is None:
        image_shape = dataset.input_shape  # an untrained zoo model adapts to the data
    if image_shape is None:
        if dataset is None:
            raise InputError(
                f"the input shape of '{model}' is unknown: pass --input-shape N,C,H,W or --data"
            )
        image_shape = dataset.input_shape
    if loaded.format == "zoo":
        _fit_zoo_model(loaded, image_shape, dataset.num_classes if dataset else None)
    captured = capture(loaded.module, shape or (1, *image_shape), leaf_modules, capture_method)
    prepared = Prepared(loaded, captured, dataset)
    if dataset is not None:
        dataset.check_model(tuple(image_shape), prepared.num_outputs)
    return prepared


def _fit_zoo_model(loaded: LoadedModel, image_shape: tuple[int, ...], num_classes: int | None) -> None:
    """Rebuild a zoo model for the input and classes at hand (zoo models are untrained, so
    nothing is lost). Models whose classifier width depends on the input size get it."""
    name = loaded.metadata["zoo"]
    default = models.get_entry(name)
    num_classes = num_classes or 10
    options = {}
    if tuple(image_shape[1:]) != default.input_shape[1:] and default.sized:
        options["input_size"] = tuple(image_shape[1:])
    if image_shape[0] != default.input_shape[0] or num_classes != 10 or options:
        loaded.module = models.build(name, num_classes=num_classes, in_channels=image_shape[0], **options)
    loaded.input_shape = tuple(image_shape)
    loaded.metadata["num_classes"] = num_classes

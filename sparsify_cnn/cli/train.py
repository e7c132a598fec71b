"""``sparsify train``: train a model on a data set and save it as a torch.export program."""

from __future__ import annotations

import click

from .options import data_option, model_options, seed_option


@click.command("train")
@model_options
@data_option(default="digits")
@seed_option
@click.option("--epochs", default=8, help="Training epochs.")
@click.option("--batch-size", default=64, help="Images per step.")
@click.option("--lr", default=0.05, help="Initial learning rate (cosine decay to 0).")
@click.option("--momentum", default=0.9, help="SGD momentum.")
@click.option("--weight-decay", default=5e-4, help="L2 penalty.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the trained model (.pt2).")
def train_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed,
    epochs, batch_size, lr, momentum, weight_decay, out,
):  # fmt: skip
    """Train MODEL on --data (seeded, deterministic) and save it to --out.

    A zoo model is built with as many outputs as the data has classes. Example:

        sparsify train zoo:lenet --data digits --epochs 8 --out lenet.pt2
    """
    import torch

    from ..evaluate import evaluate
    from ..model_io import save_program
    from ..pipeline import prepare
    from ..training import TrainConfig, train
    from ..versions import versions

    config = TrainConfig(epochs, batch_size, lr, momentum, weight_decay, seed)
    torch.manual_seed(seed)
    prepared = prepare(
        model,
        arch=arch,
        trust_pickle=trust_pickle,
        input_shape=input_shape,
        data=data,
        leaf_modules=leaf_modules,
        capture_method=capture_method,
        seed=seed,
    )
    dataset, module = prepared.data, prepared.loaded.module
    image_shape = prepared.captured.input_shape[1:]
    click.echo(f"training {model} on {dataset.name} ({len(dataset.train)} train / {len(dataset.calib)} calib images)")
    result = train(
        module,
        dataset,
        config,
        on_epoch=lambda log: click.echo(f"  epoch {log.epoch:3d}  loss {log.loss:.4f}  calib {log.calib}"),
    )
    test = evaluate(module, dataset.test)
    click.echo(f"trained in {result.seconds:.1f} s; test split: {test}")
    metadata = {
        **prepared.loaded.metadata,
        "num_classes": dataset.num_classes,
        "data": dataset.name,
        "data_fingerprint": dataset.fingerprint(),
        "train": config.to_dict(),
        "test": {"metric": test.metric, "value": test.value, "count": test.count},
        "versions": versions(),
    }
    save_program(module, tuple(image_shape), out, metadata)
    click.echo(f"saved {out}")

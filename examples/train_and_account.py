"""The Python API end to end: train the demo LeNet on the built-in digits, save it as a
torch.export program, load it back, capture its graph and print its per-layer accounting.

    python examples/train_and_account.py --epochs 8 --out lenet.pt2
"""

from __future__ import annotations

import argparse

import torch

from sparsify_cnn import models
from sparsify_cnn.data import load_data
from sparsify_cnn.evaluate import evaluate
from sparsify_cnn.model_io import save_program
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.report.render import accounting_markdown
from sparsify_cnn.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="lenet.pt2")
    args = parser.parse_args()

    torch.manual_seed(0)
    entry = models.get_entry("lenet")
    data = load_data("digits", entry.input_shape)
    model = entry.factory(num_classes=data.num_classes)
    train(model, data, TrainConfig(epochs=args.epochs, seed=0))
    print(f"trained: test split {evaluate(model, data.test)}")
    save_program(model, entry.input_shape, args.out, {"zoo": "lenet"})

    prepared = prepare(args.out, data="digits")  # what `sparsify inspect` does
    print(f"graph {prepared.captured.description}, input {prepared.captured.input_shape}")
    print(accounting_markdown(account(prepared.captured)))


if __name__ == "__main__":
    main()

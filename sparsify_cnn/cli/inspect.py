"""``sparsify inspect``: how a model was captured, its per-layer accounting and accuracy."""

from __future__ import annotations

import click

from .options import data_option, model_options, seed_option


@click.command("inspect")
@model_options
@data_option(default=None)
@seed_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the accounting as JSON.")
def inspect_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed, json_path, normalize=None
):
    """Print MODEL's per-layer parameters and MACs (and its test accuracy with --data)."""
    from ..evaluate import evaluate
    from ..pipeline import prepare
    from ..report.render import accounting_markdown
    from ..transform.accounting import account

    if json_path is not None:  # writable (and not empty) before any work, as bench's --json
        from ..storage import claim_output

        click.get_current_context().with_resource(claim_output(json_path, inside=False, option="--json"))
    prepared = prepare(
        model,
        normalize=normalize,
        arch=arch,
        trust_pickle=trust_pickle,
        input_shape=input_shape,
        data=data,
        leaf_modules=leaf_modules,
        capture_method=capture_method,
        seed=seed,
    )
    captured = prepared.captured
    acc = account(captured)
    click.echo(f"{model} ({prepared.loaded.format}): graph {captured.description}, input {captured.input_shape}")
    click.echo("")
    click.echo(accounting_markdown(acc))
    result = {"model": model, "capture": captured.method, "input_shape": list(captured.input_shape), **acc.to_dict()}
    if prepared.data is not None and not prepared.data.labeled:
        click.echo(f"{prepared.data.name} has no labels: transformed models are scored by agreement with this one")
    elif prepared.data is not None:
        score = evaluate(prepared.loaded.module, prepared.data.test)
        click.echo(f"test split of {prepared.data.name}: {score}")
        result["test"] = {"metric": score.metric, "value": score.value, "count": score.count}
    if json_path is not None:
        from ..storage import write_json

        write_json(json_path, result)

"""``sparsify zoo``: the built-in models."""

from __future__ import annotations

import click


@click.command("zoo")
def zoo_command():
    """List the built-in models (use them as zoo:NAME)."""
    from ..models import ZOO

    width = max(len(name) for name in ZOO)
    for name, entry in ZOO.items():
        shape = "x".join(map(str, entry.input_shape))
        click.echo(f"zoo:{name:<{width}}  {shape:<10}  {entry.description}")

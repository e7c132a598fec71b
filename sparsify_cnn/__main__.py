"""``python -m sparsify_cnn`` runs the ``sparsify`` command."""

from .cli.main import main

main()

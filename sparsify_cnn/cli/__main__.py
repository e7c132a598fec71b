"""``python -m sparsify_cnn.cli`` runs the ``sparsify`` command."""

from .main import main

main()

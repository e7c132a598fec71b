"""``python -m sparsify_cnn.cli``: the same as ``python -m sparsify_cnn``, whose module takes the
current directory off ``sys.path`` first and then runs the ``sparsify`` command."""

from .. import __main__  # noqa: F401 - importing it runs the command

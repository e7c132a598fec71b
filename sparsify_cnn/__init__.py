"""sparsify_cnn: capture a CNN as a torch.fx graph, rewrite it with acceleration ops, search
their masks under an accuracy budget, compile it with Apache TVM, and report MACs and measured
speed side by side.

The pipeline's stages are the subpackages: ``transform`` (capture and graph utilities),
``data``, ``models`` (the zoo), ``report`` (accounting and rendering) and ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparsify-cnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

"""Compile captured graphs with Apache TVM (Relax + TIR) and export deployable artifacts.

Stages, in order: ``exporting`` (the graph as a static-shape torch.export program),
``importer`` (to Relax, with the lowerings registered for inserted ops), ``build`` (a named,
linear pipeline of passes, then code generation), ``artifact`` (library, parameters, manifest
with checksums). ``sparsify_cnn.runtime`` loads an artifact with TVM's runtime and numpy only.
"""

from .threads import default_tvm_threads

default_tvm_threads()  # before TVM's runtime starts its thread pool (see threads.py)

"""``python -m sparsify_cnn`` runs the ``sparsify`` command.

Python puts the current directory first on sys.path for ``-m``: a ``tvm.py`` or ``numpy.py``
lying there would replace the real package at its first import. It is taken off before anything
else is imported (``--arch`` still finds modules there: see ``model_io._current_dir_last``).
Modules imported while Python starts up cannot be protected here: ``python -P -m sparsify_cnn``
or the ``sparsify`` command avoid the rule altogether.
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli.main import main  # noqa: E402 - after the path is fixed

main()

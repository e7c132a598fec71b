"""The ``sparsify`` command line: commands parse options and delegate to the library."""

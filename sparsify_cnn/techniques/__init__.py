"""The techniques, one folder each. Importing this package registers them all with
``sparsify_cnn.technique``; adding a technique adds its folder and one line here."""

from . import perforation, spatial, ssc, stan  # noqa: F401 - each registers itself

"""TVM lowerings of inserted ops, registered in ``sparsify_cnn.ops.registry``."""

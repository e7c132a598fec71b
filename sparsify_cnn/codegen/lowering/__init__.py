"""What the hand-written kernels of inserted ops share (each technique's lowering lives in its
folder and is registered in ``sparsify_cnn.ops.registry``): ``dots`` the blocked dot products,
``geometry`` a conv's sizes as kernel constants, and how a scheduled function is recognised."""


def hand_scheduled(func) -> bool:
    """A function written with its schedule (``tirx.is_scheduled``), such as the Spatial kernel."""
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))

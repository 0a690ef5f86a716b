"""Attention-mask (CAMILA) and attention-map nodes: the MODEL patches of the pack."""

"""Parameter blocks: the per-layer blocks of ``per_layer=True`` (parameters grouped by the module that owns them).

Which parameters an operator differentiates (``params=``) is
[`lamda_ext.params.select_parameters`][lamda_ext.params.select_parameters].
"""
from __future__ import annotations

__all__ = ["layer_blocks", "ROOT_BLOCK"]

ROOT_BLOCK = "<root>"       # the block of parameters registered on the model itself


def layer_blocks(names) -> dict[str, list[str]]:
    """Parameter names grouped by their owning module, in order of first appearance.

    A block is named by the parameter name up to its last dot; [`ROOT_BLOCK`][lamda_ext.hessian.blocks.ROOT_BLOCK] holds
    the parameters of the model itself.
    """
    blocks: dict[str, list[str]] = {}
    for n in names:
        owner = n.rsplit(".", 1)[0] if "." in n else ROOT_BLOCK
        blocks.setdefault(owner, []).append(n)
    return blocks

"""Parameter blocks: the per-layer blocks of ``per_layer=True`` (parameters grouped by the module that owns them).
Which parameters an operator differentiates (``params=``) is :func:`lamda_ext.params.select_parameters`."""
from __future__ import annotations

__all__ = ["layer_blocks", "ROOT_BLOCK"]

ROOT_BLOCK = "<root>"       # the block of parameters registered on the model itself


def layer_blocks(names) -> dict[str, list[str]]:
    """Parameter names grouped by their owning module (the name up to its last dot; :data:`ROOT_BLOCK` for
    parameters of the model itself), in order of first appearance."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        owner = n.rsplit(".", 1)[0] if "." in n else ROOT_BLOCK
        blocks.setdefault(owner, []).append(n)
    return blocks

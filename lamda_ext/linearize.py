"""Tangent maps of a function at a fixed point, traced once and replayed per direction.

[`linearize`][lamda_ext.linearize.linearize] traces the forward-mode derivative (``jvp``) of ``g`` at ``primal`` into an
aten graph (``make_fx``, the operations of one forward-mode evaluation). The values of that graph that do not depend on
the direction (the primal forward and backward) are computed once and kept (constant folding); every call of the
returned [`TangentMap`][lamda_ext.linearize.TangentMap] replays only the rest, for one direction, or for many under
``torch.func.vmap``.

A traced graph that writes in place into a kept value (a model that changes its input, ``x.add_(1)``, or an
intermediate, ``out += identity``, ``relu_``) would apply that write again on every replay, each replay starting
from the previous one's values. Such a graph is traced once more through ``torch.func.functionalize`` on fake
tensors (no arithmetic), with the graph's constants as inputs: every in-place op on a value the graph computes
becomes its out-of-place form, with the views of the written value regenerated from the result, and the kept
values are then never written; the result is the same map, vmapped as any other. Random ops (dropout) are not
folded: they draw again on every replay.

[`replays_consistently`][lamda_ext.linearize.replays_consistently] checks a graph before it is folded. Two cases get no
tangent map ([`linearize`][lamda_ext.linearize.linearize] returns None, and the HVPs take one ``jvp`` per direction): a
write that remains after functionalisation, into a tensor the function closes over (a counter buffer updated in place;
``torch.func.grad`` refuses most of these in its own evaluation), and a graph whose functionalisation fails on one of
its ops (a ``RuntimeWarning`` names it).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functionalize
from torch.fx.experimental.const_fold import split_const_subgraphs
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._functional_ops import DECOMPOSITIONS
from .routing import torch_jvp_warning_filtered

__all__ = ["TangentMap", "linearize", "replays_consistently"]

# in-place ops that replace every value they write: a replay recomputes what they write
_OVERWRITES = {torch.ops.aten.fill_.Scalar, torch.ops.aten.fill_.Tensor, torch.ops.aten.zero_.default,
               torch.ops.aten.copy_.default}


def _written_nodes(node: torch.fx.Node) -> list:
    """The graph values an op node writes into (its arguments the op's schema marks as written)."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return []
    out = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            val = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            out += [a for a in (val if isinstance(val, (list, tuple)) else [val]) if isinstance(a, torch.fx.Node)]
    return out


def replays_consistently(gm: torch.fx.GraphModule) -> bool:
    """Whether every replay of a tangent graph computes the same map.

    A value that depends on no placeholder (no direction) is computed once and kept. An in-place write into one of
    them would be applied again by every replay. A full overwrite (``fill_``, ``zero_``, ``copy_``) of such a value
    that nothing else reads is redone by every replay and is consistent.

    Args:
        gm: a traced tangent graph, folded or not (placeholders: the tangents).

    Returns:
        False when some node writes into a direction-independent value other than by such an overwrite.
    """
    per_replay = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in per_replay for a in node.all_input_nodes):
            per_replay.add(node)
        for written in _written_nodes(node):
            if written in per_replay:
                continue
            if node.target in _OVERWRITES and len(written.users) == 1:
                per_replay.add(node)
                continue
            return False
    return True


def _tangent(dual) -> torch.Tensor:
    """The tangent of a dual tensor (zeros where the output does not depend on the input)."""
    if not isinstance(dual, torch.Tensor):
        raise TypeError(f"the linearised function must return tensors, got {type(dual).__name__}")
    primal, tangent = fwAD.unpack_dual(dual)
    return torch.zeros_like(primal) if tangent is None else tangent


def _one_fake_mode():
    """A context in which ``make_fx`` records every traced value's metadata with one fake-tensor mode.

    Without it, ``make_fx`` makes a new ``FakeTensorMode`` for every value of a real-tensor trace, and each records
    the Python stack at its creation; through torch's tracing context (``torch._guards``) they share one.
    """
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:         # a torch without the tracing context: one mode per value
        return contextlib.nullcontext()
    return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))


def _trace_jvp(g: Callable, primal) -> tuple[torch.fx.GraphModule, list[torch.Tensor], object, object]:
    """The aten graph of one forward-mode evaluation of ``g`` at ``primal``.

    ``(graph, example tangents, input spec, output spec)``; the graph takes the flattened tangents and returns the
    flattened output tangents.
    """
    flat_primals, in_spec = tree_flatten(primal)
    out_spec = []

    def trace_fn(flat_tangents):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip(flat_primals, flat_tangents)]
            flat_out, spec = tree_flatten(g(tree_unflatten(duals, in_spec)))
            out_spec.append(spec)
            return [_tangent(d) for d in flat_out]

    tangents = [p.new_empty(()).expand_as(p) for p in flat_primals]
    with _one_fake_mode():
        gm = make_fx(trace_fn)(tangents)
    return gm, tangents, in_spec, out_spec[0]


class _ConstantsAsInputs(torch.fx.Interpreter):
    """Runs a graph with the tensors its ``get_attr`` nodes read replaced by the given ones."""

    def __init__(self, gm: torch.fx.GraphModule, constants: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.constants = constants

    def get_attr(self, target, args, kwargs):
        return self.constants[target] if target in self.constants else super().get_attr(target, args, kwargs)


def _tensor_constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors the ``get_attr`` nodes of ``gm`` read, by target."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                out[node.target] = value
    return out


def _functionalized(gm: torch.fx.GraphModule, tangents: list[torch.Tensor]) -> torch.fx.GraphModule:
    """``gm`` with every in-place op on a value it computes replaced by its out-of-place form (same values).

    The graph is traced again through ``torch.func.functionalize`` with its constants as inputs (on fake tensors;
    on copies of the real ones where an op needs the values), with ``copy`` and the strided view ops in forms that
    ``vmap`` batches (`lamda_ext._functional_ops`); then the constants are put back as ``get_attr`` nodes of a
    new module. A write into a constant itself stays (a copy into it at the end).

    Args:
        gm: a traced tangent graph (placeholders: the tangents; ``get_attr`` nodes: the tensors it reads).
        tangents: example tangents, one per placeholder (their shapes, dtypes and devices are used).

    Returns:
        The functionalised graph, with the same placeholders and outputs.
    """
    constants = _tensor_constants(gm)
    names = list(constants)

    def run(flat_tangents, flat_constants):
        return _ConstantsAsInputs(gm, dict(zip(names, flat_constants))).run(*flat_tangents)

    tangents = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tangents]   # replay layout
    try:
        traced = make_fx(functionalize(run, remove="mutations"), DECOMPOSITIONS, tracing_mode="fake")(
            tangents, [constants[n] for n in names])
    except (RuntimeError, NotImplementedError):     # an op that needs the values (data-dependent): on copies
        traced = make_fx(functionalize(run, remove="mutations"), DECOMPOSITIONS)(
            tangents, [constants[n].clone() for n in names])
    root = torch.nn.Module()
    graph, env, placeholders = torch.fx.Graph(), {}, 0
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if placeholders < len(tangents):
                env[node] = graph.placeholder(f"tangent_{placeholders}")
            else:
                name = f"constant_{placeholders - len(tangents)}"
                setattr(root, name, constants[names[placeholders - len(tangents)]])
                env[node] = graph.get_attr(name)
            placeholders += 1
        elif node.op == "get_attr":      # tensors the functionalised trace created (none besides the inputs)
            setattr(root, node.target, getattr(traced, node.target))
            env[node] = graph.get_attr(node.target)
        else:
            env[node] = graph.node_copy(node, lambda a: env[a])
    return torch.fx.GraphModule(root, graph)


class TangentMap:
    """The ``jvp`` of a function at a fixed point, as a folded graph replayed per call.

    Args:
        gm: the constant-folded tangent graph (takes the flattened tangents, returns the flattened output tangents).
        in_spec: the pytree structure of the function's input.
        out_spec: the pytree structure of its output.
    """

    def __init__(self, gm: torch.fx.GraphModule, in_spec, out_spec):
        self.graph_module = gm
        self.in_spec = in_spec
        self.out_spec = out_spec

    def __call__(self, tangent):
        """The output tangent (the function's output structure) for ``tangent`` (the input's structure)."""
        flat, spec = tree_flatten(tangent)
        if spec != self.in_spec:
            raise ValueError(f"the tangent has structure {spec}, the linearised function's input {self.in_spec}")
        return tree_unflatten(list(self.graph_module(*flat)), self.out_spec)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors the graph holds (distinct storages).

        The kept direction-independent values and the tensors the function reads (the point, its data).
        """
        seen, total = set(), 0
        for t in list(self.graph_module.parameters()) + list(self.graph_module.buffers()):
            if t._is_zerotensor():      # forward-mode AD's symbolic zeros: no storage
                continue
            st = t.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
        return total


def linearize(g: Callable, primal) -> TangentMap | None:
    """The tangent map of ``g`` at ``primal``, its direction-independent values computed once.

    Args:
        g: a function of one pytree of tensors returning a pytree of tensors (evaluated under forward-mode AD:
            any routing modes it needs must be active around this call).
        primal: the point (tensors, in any pytree).

    Returns:
        A [`TangentMap`][lamda_ext.linearize.TangentMap], or None when no consistent replay is found: the function
        writes in place into a tensor it closes over, or it writes in place into values of the point and
        functionalisation fails on one of its ops (with a ``RuntimeWarning`` naming the error).
    """
    with torch_jvp_warning_filtered(), warnings.catch_warnings():
        # constant folding warns about its own get_attr nodes
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        gm, tangents, in_spec, out_spec = _trace_jvp(g, primal)
        if not replays_consistently(gm):
            try:
                gm = _functionalized(gm, tangents)
            except (RuntimeError, NotImplementedError, TypeError) as err:
                warnings.warn(f"lamda_ext.linearize: the traced graph writes in place into values of the point and "
                              f"could not be functionalised ({type(err).__name__}: {err}); every direction will "
                              "take its own jvp.", RuntimeWarning, stacklevel=2)
                return None
            if not replays_consistently(gm):
                return None
        folded = split_const_subgraphs(gm)
        folded.run_folding()
    return TangentMap(folded, in_spec, out_spec)

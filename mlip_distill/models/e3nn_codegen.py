"""Pruning of the code e3nn generates for its tensor products.

e3nn builds each tensor product, linear map and gate as a ``torch.fx`` graph. Up to torch 2.9 it
compiled that graph with TorchScript, which drops computations whose result is never used; from
torch 2.10 on (``torch.jit`` deprecated) it runs the graph as it is, and the graph holds outer
products that nothing reads. For a NequIP layer with l = 1 features the largest of them is an
(edges, 32, 1, 3, 3) tensor per call: on 1,000 silicon atoms it was a third of the student's time
(``benchmarks/results/student_profile.md``). Removing these unused einsums changes no number.
"""

from __future__ import annotations

import torch
from torch import fx, nn

_EINSUMS = (torch.einsum, torch.functional.einsum)


def prune_unused_einsums(model: nn.Module) -> int:
    """Remove, in place, every einsum whose result nothing uses from the e3nn-generated graphs
    of ``model``'s submodules; returns how many were removed.

    Only einsums are removed: the graphs also hold in-place copies (``copy_``) whose results are
    unused by design, which a general dead-code elimination would wrongly delete.
    """
    removed = 0
    for module in model.modules():
        for name in getattr(module, "__codegen__", ()):
            graph_module = getattr(module, name, None)
            if not isinstance(graph_module, fx.GraphModule):
                continue
            unused = [
                node
                for node in graph_module.graph.nodes
                if node.op == "call_function" and node.target in _EINSUMS and not node.users
            ]
            for node in unused:
                graph_module.graph.erase_node(node)
            if unused:
                graph_module.recompile()
                removed += len(unused)
    return removed

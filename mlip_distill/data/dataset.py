"""Graphs of a label store's structures, read lazily, for training and evaluation."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from mlip_distill.data.errors import DataError
from mlip_distill.data.graph import _OFFSET_NAME_PARTS, build_graph
from mlip_distill.data.graph_cache import GraphCache
from mlip_distill.data.store import LabelStore

log = logging.getLogger(__name__)


class GraphDataset(torch.utils.data.Dataset):
    """The structures of a label store as graph records (see :mod:`mlip_distill.data.graph`).

    Each item is read from the file when asked for, with the labels of one source (NaN where
    missing), ``structure_id`` set to the store index and ``system_id`` to the store's; on
    request also the source's node features of some layers (``features_<layer>`` (N, F)) and its
    Hessian-vector products (``hvp_v``, ``hvp_hv`` (N, K, 3)). The edges come from the graph
    cache beside the label file when ``graph_cache`` is set (built there once, see
    :mod:`mlip_distill.data.graph_cache`), otherwise from a neighbour list built per item. The
    store and the cache reopen their files in each DataLoader worker, so ``num_workers > 0`` is
    safe.

    Attributes:
        indices: (len(self),) int64 store indices of the items, in order.
        n_dropped: structures of the requested subset left out for lacking a required label.
        feature_irreps: e3nn irreps of the loaded feature layers, layer -> irreps.
        hvp_probes: K, the Hessian-vector probes per structure; 0 unless ``hessian``.
    """

    def __init__(
        self,
        store_path: str | Path,
        source: str | None,
        cutoff: float,
        indices: Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        require: Sequence[str] = ("energy", "forces"),
        cache: bool = False,
        features: Sequence[str] = (),
        hessian: bool = False,
        graph_cache: bool | str | Path = False,
    ) -> None:
        """
        Args:
            store_path: the HDF5 label file.
            source: label source, e.g. ``"teacher"``; None gives graphs without labels.
            cutoff: neighbour cutoff, Å.
            indices: store indices to use (default: all).
            dtype: float dtype of the graphs (default: torch's default dtype).
            require: labels a structure must have to be kept (any key of
                :meth:`~mlip_distill.data.store.LabelStore.has_label`); the others are dropped
                with a warning that counts them.
            cache: keep built graphs in memory (per process); items are then shared, so do
                not modify them in place.
            features: feature layers of the source to load (default none: batches stay small).
            hessian: load the source's Hessian-vector products.
            graph_cache: read the edges from a graph cache: True for the one beside the label
                file (:func:`~mlip_distill.data.graph_cache.graph_cache_path`), or its path;
                built first when absent or stale. Where it cannot be written, the neighbour
                lists are built per item instead, with a warning.
        Raises:
            DataError: the source is absent or lacks the requested features or Hessian-vector
                products, a feature layer has a name torch-geometric would offset, an index is
                out of range, or no structure is left.
        """
        self.store = LabelStore(store_path)
        self.source = source
        self.cutoff = float(cutoff)
        self.dtype = dtype
        name = str(store_path)
        if source is None and (require or features or hessian):
            raise ValueError("required labels, features and Hessians need a label source")
        if source is not None and source not in self.store.sources():
            known = ", ".join(self.store.sources()) or "none"
            raise DataError(f"{name}: no labels from source '{source}' (sources: {known})")
        self.features = tuple(features)
        self.hessian = bool(hessian)
        stored_layers = self.store.feature_layers(source) if source is not None else {}
        for layer in self.features:
            if layer not in stored_layers:
                known = ", ".join(stored_layers) or "none"
                raise DataError(
                    f"{name}: source '{source}' has no node features of layer '{layer}' "
                    f"(layers: {known})"
                )
            if any(part in layer for part in _OFFSET_NAME_PARTS):
                raise DataError(
                    f"{name}: feature layer '{layer}': torch-geometric would offset a field "
                    f"whose name contains {', '.join(_OFFSET_NAME_PARTS)} when batching"
                )
        self.feature_irreps = {layer: stored_layers[layer] for layer in self.features}
        self.hvp_probes = self.store.hvp_probes(source) if self.hessian else 0
        if self.hessian and not self.hvp_probes:
            raise DataError(f"{name}: source '{source}' has no Hessian-vector products")
        n_stored = len(self.store)
        candidates = np.arange(n_stored) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(candidates) == 0:
            raise DataError(f"{name}: no structures to use (the store holds {n_stored})")
        outside = candidates[(candidates < 0) | (candidates >= n_stored)]
        if len(outside):
            raise DataError(f"{name}: structure {outside[0]} out of range ({n_stored} structures)")
        keep = np.ones(len(candidates), dtype=bool)
        for k, key in enumerate(require):
            keep &= self.store.has_label(source, key)[candidates]
            if not keep.any():
                labels = " and ".join(require[: k + 1])
                raise DataError(f"{name}: no structure has {labels} for source '{source}'")
        self.n_dropped = int((~keep).sum())
        if self.n_dropped:
            warnings.warn(
                f"{name}: {self.n_dropped} of {len(candidates)} structures lack "
                f"{' or '.join(require)} from source '{source}' and are left out",
                stacklevel=2,
            )
        self.indices = candidates[keep]
        self._cache: dict[int, Data] | None = {} if cache else None
        self.graph_cache = self._open_graph_cache(graph_cache) if graph_cache else None

    def _open_graph_cache(self, graph_cache: bool | str | Path) -> GraphCache | None:
        path = None if graph_cache is True else Path(graph_cache)
        try:
            return GraphCache(self.store.path, self.cutoff, path)
        except OSError as exc:
            log.warning(
                f"{self.store.path}: cannot write a graph cache ({exc}); neighbour lists are "
                "built per item instead"
            )
            return None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Data:
        index = int(self.indices[item])
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arrays = self.store.arrays(index)
        labels = (
            self.store.labels(self.source, index, features=self.features, hessian=self.hessian)
            if self.source is not None
            else None
        )
        graph = build_graph(
            arrays["numbers"], arrays["positions"], arrays["cell"], arrays["pbc"], self.cutoff,
            labels=labels, structure_id=index, system_id=arrays["system_id"], dtype=self.dtype,
            edges=None if self.graph_cache is None else self.graph_cache.edges(index),
        )
        if self._cache is not None:
            self._cache[index] = graph
        return graph


def split_indices(
    n: int, valid_fraction: float | None = None, n_valid: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A random train/validation split of ``range(n)``, reproducible from ``seed``.

    Give either ``valid_fraction`` (rounded, at least one) or ``n_valid``; both parts keep at
    least one item.

    Returns:
        ``train`` and ``valid``: sorted int64 positions, disjoint, together ``range(n)``.
    """
    if (valid_fraction is None) == (n_valid is None):
        raise ValueError("give exactly one of valid_fraction and n_valid")
    if valid_fraction is not None:
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie strictly in (0, 1), not {valid_fraction}")
        n_valid = max(1, round(valid_fraction * n))
    if not 0 < n_valid < n:
        raise ValueError(f"cannot split {n} structures into train and {n_valid} for validation")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])

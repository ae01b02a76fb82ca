"""Shards of a labelling run: copying structures with all their labels between label files, and
merging the label files of ``mlip-distill label --shard i/n`` into the file one run writes.

Reads label files only through :class:`~mlip_distill.data.store.LabelStore`'s public methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlip_distill.data.errors import DataError
from mlip_distill.data.store import LabelStore

_COPY_BATCH = 256  # structures read, then appended, at a time by copy_structures


def copy_structures(rows: Sequence[tuple[LabelStore, int]], target: LabelStore) -> np.ndarray:
    """Append the structures ``rows`` ((store, index) pairs) to ``target`` in that order, with
    their system id, config type and source index, and the labels of every source of their
    stores; those sources' provenance and isolated-atom energies come along.

    Returns:
        (len(rows),) int64 indices of the copies in ``target``.
    """
    stores = list({id(store): store for store, _ in rows}.values())
    for store in stores:
        for source in store.sources():
            target.set_labels(source, [], [], store.provenance(source))
        for source in store.isolated_atom_sources():
            target.set_isolated_atoms(source, store.isolated_atoms(source))
    copies = [np.arange(len(target), len(target), dtype=np.int64)]
    for first in range(0, len(rows), _COPY_BATCH):
        batch = rows[first : first + _COPY_BATCH]
        arrays = [store.arrays(index) for store, index in batch]
        indices = target.append(
            [store.structure(index) for store, index in batch],
            system_id=[entry["system_id"] for entry in arrays],
            config_type=[entry["config_type"] for entry in arrays],
            source_index=[store.source_index(index) for store, index in batch],
        )
        for source in target.sources():
            holders = [(store, index, k) for k, (store, index) in enumerate(batch)
                       if source in store.sources()]
            target.set_labels(
                source,
                indices[[k for _, _, k in holders]],
                [store.labels(source, index) for store, index, _ in holders],
                feature_irreps=holders[0][0].feature_layers(source) if holders else None,
                replace=True,
            )
        copies.append(indices)
    return np.concatenate(copies)


def merge_shards(shard_paths: Sequence[str | Path], out_path: str | Path) -> int:
    """Join the label files of every shard of one input (``mlip-distill label --shard i/n``)
    into ``out_path``, a new label file: the structures in the input's order with all their
    labels, the sources' provenance and isolated-atom energies, as one unsharded run writes them.

    Returns:
        the number of structures.
    Raises:
        DataError (one line): ``out_path`` exists; a file is not a shard; shards of different
            inputs or split in different counts; a shard given twice, missing or incomplete;
            shards whose label sources or provenance differ (other teachers or settings).
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise DataError(f"{out_path}: already exists; merge writes a new label file")
    if not shard_paths:
        raise DataError(f"{out_path}: no shards to merge")
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(LabelStore(path)) for path in shard_paths]
        by_index = _shards_in_order(stores)
        count = len(by_index)
        n_structures = by_index[0].shard.n_structures
        rows = [(by_index[k % count], k // count) for k in range(n_structures)]
        with LabelStore(out_path, "a") as out:
            copy_structures(rows, out)
    return n_structures


def _shards_in_order(stores: Sequence[LabelStore]) -> list[LabelStore]:
    """The shard files ``stores`` ordered by shard index, after checking that they are every
    complete shard of one input, labelled alike (one-line :class:`DataError` otherwise)."""
    first = stores[0]
    by_index: dict[int, LabelStore] = {}
    for store in stores:
        shard, first_shard = store.shard, first.shard
        if shard is None or first_shard is None:
            unsharded = store if shard is None else first
            raise DataError(f"{unsharded.path}: not a shard (labelled without --shard)")
        if (shard.count, shard.n_structures, shard.input_sha256) != (
            first_shard.count, first_shard.n_structures, first_shard.input_sha256
        ):
            raise DataError(
                f"{store.path} is shard {shard} of {shard.n_structures} structures, "
                f"{first.path} shard {first_shard} of {first_shard.n_structures} (input sha256 "
                f"{shard.input_sha256[:12]} vs {first_shard.input_sha256[:12]}); merge the "
                "shards of one input, split once"
            )
        if shard.index in by_index:
            raise DataError(f"{by_index[shard.index].path} and {store.path} are both shard {shard}")
        expected = len(shard.positions())
        if len(store) != expected:
            raise DataError(
                f"{store.path}: holds {len(store)} structures, but shard {shard} of "
                f"{shard.n_structures} has {expected}"
            )
        if store.sources() != first.sources():
            raise DataError(
                f"{store.path} has label sources {', '.join(store.sources()) or 'none'} but "
                f"{first.path} has {', '.join(first.sources()) or 'none'}; merge shards "
                "labelled alike"
            )
        for source in store.sources():
            mine, theirs = store.provenance(source), first.provenance(source)
            if mine != theirs:
                raise DataError(
                    f"{store.path} and {first.path} were labelled differently: source '{source}' "
                    f"comes from {mine.get('spec', 'unknown')} and {theirs.get('spec', 'unknown')}"
                    " (or other settings); merge shards labelled by one teacher, one way"
                )
        by_index[shard.index] = store
    count = first.shard.count
    missing = [f"{index}/{count}" for index in range(count) if index not in by_index]
    if missing:
        raise DataError(
            f"shard {', '.join(missing)} of {first.path}'s input missing; give every shard"
        )
    return [by_index[index] for index in range(count)]

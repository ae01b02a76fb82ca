"""Structures and labels: the HDF5 label store, ASE I/O, graphs and datasets, statistics."""

"""Descriptors on disk and nearest-neighbour search over them."""

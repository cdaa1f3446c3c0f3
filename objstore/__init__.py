"""objstore: a design-for-failure, erasure-coded object store."""

__version__ = "0.1.0"

"""Inside the multi-node guest: the ``node`` fixture (see numanode.py)."""

from tests.pinning_numa.inner.numanode import node

__all__ = ["node"]

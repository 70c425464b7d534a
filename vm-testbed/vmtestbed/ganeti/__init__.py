"""A real Ganeti 3.0 or 3.1 cluster on one machine: nodes are network+UTS+mount namespaces.

See ``vm-testbed/ganeti/README.md`` for how to use it and the recipe it follows.
"""

from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.lab import Lab

__all__ = ["Lab", "LabError"]

"""The pinning action (action.py): NUMA-aware 1:1 vCPU pinning; topology, QEMU threads,
the planner, affinities, memory moves and its status part."""

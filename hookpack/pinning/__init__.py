"""NUMA-aware 1:1 vCPU pinning: topology, QEMU threads, the planner, affinities."""

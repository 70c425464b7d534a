"""vm-testbed: real QEMU guests and a network node laid out like a Ganeti KVM node."""

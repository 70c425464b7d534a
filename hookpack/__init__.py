"""hookpack: Ganeti KVM hook pack."""

__version__ = "0.1.0"

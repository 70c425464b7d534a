"""Helpers of the disk-grow action: planning (pure), storage and node observation."""

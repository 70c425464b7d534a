"""The disk-grow action (action.py): planning (pure), storage and node observation, the
QMP grow and its status part."""

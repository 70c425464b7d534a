"""The record action (action.py): one JSON line per hook run."""

"""The policy action (action.py): the pre-hook name gate."""

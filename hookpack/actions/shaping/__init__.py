"""The shaping action: per-VM HTB shaping (action.py) and its tc/nft/policy/status code."""

"""The dns action (action.py): PowerDNS records in step with the instances; `hookpack dns
sync` (sync.py)."""

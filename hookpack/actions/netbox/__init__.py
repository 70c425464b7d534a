"""The netbox action (action.py): a NetBox VM in step with each instance."""

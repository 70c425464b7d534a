"""The announce action (action.py): migrations to Slack, Grafana and webhooks from the
master, via a durable outbox; its commands (cli.py), events and delivery."""

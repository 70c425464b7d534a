"""One module per action: SETTINGS (its config section) and run(ctx) -> Result."""

"""One package per action: hookpack/actions/<name>/action.py holds SETTINGS (its config
section), run(ctx) -> Result and, if it has any, add_cli/cmd_*, status and metrics; the
action's domain code sits beside it. See docs/development.md ("Adding an action")."""

"""Service logic (routes and the CLI call these; they never touch HTTP)."""

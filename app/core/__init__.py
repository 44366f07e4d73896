"""Cross-cutting service pieces: configuration, errors, logging, API-key auth."""

"""Ranking-quality benchmarks (run as modules from the repository root, e.g. ``python -m bench.model_zoo``)."""

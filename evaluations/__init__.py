"""Metrics, the evaluation harness, reports, benchmarks and the command line."""

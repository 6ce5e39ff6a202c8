"""Metrics and benchmarks. Never imported by model code."""

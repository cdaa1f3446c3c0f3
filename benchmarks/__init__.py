"""Benchmarks: codec throughput, load generation and chaos scenarios (run as modules, never by pytest)."""

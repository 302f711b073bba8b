"""Benchmarks and launch aids; the core package never imports this sub-package."""

"""Benchmarks of kitrec_fast (see benchmarks/README.md); scripts run from the checkout root."""

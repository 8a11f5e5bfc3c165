"""One training measurement: the harness, its worker, what is measured, the report."""

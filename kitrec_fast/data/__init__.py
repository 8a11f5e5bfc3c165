"""Rows in: loading, validation, the stratified split, the synthetic generator, the prepare step."""

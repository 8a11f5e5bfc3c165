"""Generation with trained adapters, parsing, ranking metrics and model comparison."""

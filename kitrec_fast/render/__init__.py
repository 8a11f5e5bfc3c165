"""Chat-template rendering and label masking: rows become ``(ids, labels)``."""

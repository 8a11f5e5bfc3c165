"""Segment-aware truncation of KitREC prompts to a token budget."""

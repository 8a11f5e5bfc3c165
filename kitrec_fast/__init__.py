"""kitrec_fast: fast QLoRA fine-tuning of the KitREC cross-domain recommender.

Data flows through the subpackages in this order:
data -> truncate -> render -> backends -> train -> artifacts (and eval for trained adapters).
"""

__version__ = "0.1.0"

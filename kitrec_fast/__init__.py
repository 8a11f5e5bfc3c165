"""kitrec_fast: fast QLoRA fine-tuning of the KitREC cross-domain recommender.

Data flows through the subpackages in this order:
data -> truncate -> render -> backends -> train -> artifacts (and eval for trained adapters).
"""

__version__ = "0.1.0"

import os as _os

# A process started by a quiet command (vLLM's engine processes among them): hide the same lines.
if _os.environ.get("KITREC_FAST_QUIET") == "1":
    from kitrec_fast.quiet import hide_known_noise as _hide

    _hide()

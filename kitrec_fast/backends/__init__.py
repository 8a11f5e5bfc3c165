"""Model backends: the Unsloth fast path and the plain transformers + bitsandbytes + PEFT baseline."""

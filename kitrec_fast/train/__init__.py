"""TRL SFT training, the chunked smoothed loss, callbacks and the run orchestration."""

"""The GPU run: phases, the model build, backend parity, process control, scrubbing."""

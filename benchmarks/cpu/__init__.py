"""CPU benchmarks: data preparation, evaluation throughput, checkpoint saving."""

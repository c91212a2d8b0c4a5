"""Medical evaluation on the seed's benchmarks, scored with the same extraction as the GRPO rewards."""

"""ndjax: Network Dissection in JAX/Flax."""

"""warmup: reproduce "Why Warmup the Learning Rate?" (Kalra & Barkeshli, 2024) in JAX."""

"""Building blocks: attention (full, windowed, backend dispatch), causal 3D conv, norms, embeddings, MLP."""

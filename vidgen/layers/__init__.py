"""Building blocks: attention (full, windowed, backend dispatch), causal 3D conv, norms, embeddings, MLP, the scan over
stacked blocks, and the dtype names of the precision policy."""

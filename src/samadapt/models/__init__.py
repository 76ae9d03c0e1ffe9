"""SAM model registry, building, loading and saving; the embedding cache."""

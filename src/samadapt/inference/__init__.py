"""Inference: decode prompts on cached embeddings; later the Segmenter, volumes and propagation."""

"""trainer: train bidirectional embedding models on datakit shards."""
__version__ = "0.1.0"

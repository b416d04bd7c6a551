"""datakit: build text-embedding training corpora (retrieval, NLI/STS pairs, classification)."""
__version__ = "0.1.0"

"""LLM access through litellm: on-disk cache, bounded concurrency, retries, JSON outputs, tokens and cost."""
import os

# litellm otherwise fetches its model cost map from the network at import; the bundled copy works offline
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

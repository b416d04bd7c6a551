"""embedkit: what datakit and trainer share (config files, folder locks, CLI conventions). Both packages import
it; it imports neither, and nothing heavier than pydantic, PyYAML and rich."""
__version__ = "0.1.0"

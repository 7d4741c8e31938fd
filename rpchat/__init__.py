"""rpchat: a terminal roleplay chat client for LimaRP-family GGUF models."""

__version__ = "0.1.0"

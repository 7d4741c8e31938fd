"""Engines: a built prompt in, a stream of text out (local llama.cpp or a remote server)."""

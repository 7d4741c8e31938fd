"""Prompt building: formats (YAML data), macros, the builder, context fitting and lorebooks."""

from __future__ import annotations

from rpchat.prompt.builder import BuiltPrompt, build_prompt
from rpchat.prompt.formats import PromptFormat, list_formats, load_format, load_formats
from rpchat.prompt.segments import Segment, join_text

__all__ = [
    "BuiltPrompt",
    "PromptFormat",
    "Segment",
    "build_prompt",
    "join_text",
    "list_formats",
    "load_format",
    "load_formats",
]

"""The Textual app: library, chat, and the screens around them. Nothing outside this package imports Textual."""

"""The Gradio app that `unip space create` copies into a Space folder as `app.py` (package data, not imported)."""

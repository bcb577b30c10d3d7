"""``anygpt serve``: an OpenAI-compatible HTTP server over the shared inference engine."""

"""Plain-Python access to the models: streaming client, versioned prompts, server launchers."""

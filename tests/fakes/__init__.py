"""Stand-ins for outside services: used only where the real one is slow or cannot fail on cue."""

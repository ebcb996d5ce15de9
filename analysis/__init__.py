"""Plain-Python analysis of exported study tables (filled in by the analysis issue)."""

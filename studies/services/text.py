"""Text typed by participants, as it is stored."""


def normalise_newlines(text: str) -> str:
    """CRLF and lone CR (how forms and some clients send line breaks) become LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")

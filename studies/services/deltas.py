"""Where a delta frame's text goes: offsets in UTF-16 code units, the unit the page counts in.

The page (webapp/static/js/chat.js) holds the reply as a JavaScript string and cuts it at the
frame's `start` before appending the delta, so `start` counts UTF-16 code units: an emoji or any
other character outside the Basic Multilingual Plane is two units (one Python code point). The
relay counts with `utf16_len`; Python clients of the socket (tests, the fault-injection
participants, benchmarks) rebuild the text with `delta_apply`, as the page does. Plain Python.
"""


def utf16_len(text: str) -> int:
    """The length of `text` in UTF-16 code units (JavaScript's `length`).

    A lone surrogate (half an emoji that a model server cut between two chunks) is one unit, as
    in JavaScript, which joins it with the other half when that arrives.
    """
    if text.isascii():  # the usual case, and the cheapest
        return len(text)
    return len(text.encode("utf-16-le", errors="surrogatepass")) // 2


def delta_apply(text: str, frame: dict) -> str | None:
    """The text on screen after a delta frame, as chat.js applies it; None for a gap.

    A frame with `full` replaces the text; otherwise the text is cut at `start` (UTF-16 units)
    and the delta appended. A `start` past the end is a gap: the page keeps its text and waits
    for a frame that carries the whole text.
    """
    if "full" in frame:
        return frame["full"]
    start = frame["start"]
    if start == len(text) and text.isascii():
        return text + frame["delta"]
    units = text.encode("utf-16-le", errors="surrogatepass")
    if start * 2 > len(units):
        return None
    return units[: start * 2].decode("utf-16-le", errors="surrogatepass") + frame["delta"]

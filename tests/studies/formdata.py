"""A rendered admin form's values, collected from its HTML as a browser would post them back."""

from html.parser import HTMLParser


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self._select: str | None = None
        self._selected: list[str] = []
        self._first: str | None = None
        self._multiple = False
        self._textarea: str | None = None
        self._text = ""

    def _add(self, name: str, value: str) -> None:
        self.data.setdefault(name, []).append(value)

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self._add(name, a.get("value") or "on")
            else:
                self._add(name, a.get("value") or "")
        elif tag == "select" and name:
            self._select, self._selected, self._first = name, [], None
            self._multiple = "multiple" in a
        elif tag == "option" and self._select is not None:
            value = a.get("value") or ""
            self._first = value if self._first is None else self._first
            if "selected" in a:
                self._selected.append(value)
        elif tag == "textarea" and name:
            self._textarea, self._text = name, ""

    def handle_data(self, data) -> None:
        if self._textarea is not None:
            self._text += data

    def handle_endtag(self, tag) -> None:
        if tag == "select" and self._select is not None:
            # A single select submits its first option when none is marked; a multiple one nothing.
            first = [] if self._multiple or self._first is None else [self._first]
            chosen = self._selected or first
            for value in chosen:
                self._add(self._select, value)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self._add(self._textarea, self._text.removeprefix("\n"))
            self._textarea = None


def form_data(html: str) -> dict[str, list[str]]:
    """Every named input, select and textarea of the page with the value it would submit."""
    parser = _Form()
    parser.feed(html)
    data = parser.data
    data.pop("csrfmiddlewaretoken", None)
    return data

"""Reading participant pages as a browser would: their forms (every field, hidden ones too)."""

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Field:
    name: str
    kind: str  # input type, "textarea", "select" or "button"
    value: str = ""
    checked: bool = False
    label: str = ""


@dataclass
class Form:
    action: str
    method: str
    id: str = ""
    fields: list[Field] = field(default_factory=list)

    def names(self) -> list[str]:
        """Field names in page order, once each."""
        return list(dict.fromkeys(f.name for f in self.fields if f.name))

    def choices(self, name: str) -> list[str]:
        """The values offered by the radio buttons, checkboxes or options called `name`."""
        return [f.value for f in self.fields if f.name == name and f.kind in CHOICE_KINDS]

    def defaults(self) -> dict[str, str]:
        """What submitting the form untouched sends: hidden, text and checked fields."""
        data: dict[str, str] = {}
        for f in self.fields:
            if not f.name or f.kind in ("button", "submit", "image", "reset", "file"):
                continue
            if f.kind in CHOICE_KINDS and not f.checked:
                continue
            data.setdefault(f.name, f.value)
        return data


CHOICE_KINDS = ("radio", "checkbox", "option")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.attrs_by_id: dict[str, dict[str, str]] = {}
        self.text_by_id: dict[str, str] = {}
        self._form: Form | None = None
        self._text: Field | None = None  # the textarea or option being read
        self._select: str = ""
        self._open_ids: list[tuple[str, str]] = []  # (tag, id) of elements whose text we collect
        self.notices: list[str] = []
        self._notice: list[tuple[str, int]] = []  # (tag, index in notices) of open notices

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id"):
            self.attrs_by_id[a["id"]] = a
            self.text_by_id.setdefault(a["id"], "")
            if tag not in VOID:
                self._open_ids.append((tag, a["id"]))
        notice = a.get("role") in ("alert", "status") or "error" in a.get("class", "").split()
        if notice and tag not in VOID:
            self._notice.append((tag, len(self.notices)))
            self.notices.append("")
        if tag == "form":
            method = a.get("method", "get").lower()
            self._form = Form(action=a.get("action", ""), method=method, id=a.get("id", ""))
            self.forms.append(self._form)
        elif self._form is None:
            return
        elif tag in ("input", "button"):
            kind = a.get("type", "text" if tag == "input" else "submit").lower()
            checked = "checked" in a
            self._form.fields.append(Field(a.get("name", ""), kind, a.get("value", ""), checked))
        elif tag == "textarea":
            self._text = Field(a.get("name", ""), "textarea")
            self._form.fields.append(self._text)
        elif tag == "select":
            self._select = a.get("name", "")
        elif tag == "option" and self._select:
            self._text = Field(self._select, "option", a.get("value", ""), "selected" in a)
            self._form.fields.append(self._text)

    def handle_endtag(self, tag: str) -> None:
        if self._open_ids and self._open_ids[-1][0] == tag:
            self._open_ids.pop()
        if self._notice and self._notice[-1][0] == tag:
            self._notice.pop()
        if tag == "form":
            self._form = None
        elif tag in ("textarea", "option"):
            self._text = None
        elif tag == "select":
            self._select = ""

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open_ids:
            self.text_by_id[element_id] += data
        for _, index in self._notice:
            self.notices[index] += data
        if self._text is not None:
            if self._text.kind == "textarea":
                self._text.value += data
            elif not self._text.value:
                self._text.label += data


@dataclass
class Page:
    """A parsed HTML page: its forms, and the attributes and text of elements with an id."""

    forms: list[Form]
    attrs_by_id: dict[str, dict[str, str]]
    text_by_id: dict[str, str]
    notices: list[str]

    def post_form(self, action_path: str | None = None) -> Form | None:
        """The page's POST form (the one posting to `action_path` when several do)."""
        posts = [f for f in self.forms if f.method == "post"]
        for form in posts:
            if action_path is not None and form.action.split("?")[0] == action_path:
                return form
        return posts[0] if posts else None

    def text(self, element_id: str) -> str:
        return " ".join(self.text_by_id.get(element_id, "").split())

    def notice(self) -> str:
        """The page's alerts, statuses and form errors, as one line."""
        return " | ".join(t for t in (" ".join(n.split()) for n in self.notices) if t)


def page_parse(html: str) -> Page:
    """Parse a page's HTML into its forms and id'd elements."""
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return Page(parser.forms, parser.attrs_by_id, parser.text_by_id, parser.notices)

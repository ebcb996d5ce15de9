from html.parser import HTMLParser

import pytest

from studies.services.rendering import render_markdown


class Tags(HTMLParser):
    """Collects the real tags and attributes of an HTML fragment (escaped text is not a tag)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def test_markdown_becomes_html():
    html = render_markdown("# Title\n\n**bold** and a [link](https://example.org)")
    assert [t for t, _ in tags_of(html)] == ["h1", "p", "strong", "a"]
    assert dict(tags_of(html))["a"]["href"] == "https://example.org"
    assert "noopener" in dict(tags_of(html))["a"]["rel"]


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        '<a href="https://example.org" onclick="steal()">x</a>',
        "<iframe src='https://evil.example'></iframe>",
    ],
)
def test_model_output_cannot_inject_markup_or_scripts(hostile):
    for tag, attrs in tags_of(render_markdown(hostile)):
        assert tag in {"p", "a"}
        assert not any(name.startswith("on") for name in attrs)
        assert not (attrs.get("href") or "").lower().startswith("javascript")

"""Model output is untrusted: Markdown with raw HTML off, then sanitised with nh3."""

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_ALLOWED_TAGS = {
    "p",
    "br",
    "strong",
    "em",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "a",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}


# A reply's HTML is stored on its row when it completes (Message.html); rows completed before
# that field existed are rendered when read, once per process (keyed by their text, so an edited
# text renders afresh); about 1,000 replies fit.
@lru_cache(maxsize=1024)
def render_markdown(text: str) -> str:
    """Render a finished reply to safe HTML."""
    html = _md.render(text)
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )

"""Likely personal data in free text, found with Presidio's pattern recognisers only.

Each recogniser's `analyze` is called directly: Presidio's AnalyzerEngine would load a spaCy
model, and names, places and other context-bound data need one, so they are not detected here.
What is found is flagged for a person to review, never removed. Nothing is fetched at run time:
the e-mail check uses tldextract's bundled public-suffix snapshot instead of downloading the list.
"""

from dataclasses import dataclass
from functools import cache
from typing import Any

CONTEXT_CHARS = 30


@dataclass(frozen=True)
class Span:
    entity_type: str
    score: float
    start: int
    end: int
    text: str
    context: str


@cache
def recognizers() -> tuple[Any, ...]:
    """The pattern recognisers, built once (importing Presidio pulls in spaCy: seconds)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        # The stock check calls tldextract.extract, which downloads the suffix list once.
        def validate_result(self, pattern_text: str) -> bool:
            return offline(pattern_text).fqdn != ""

    return (
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UrlRecognizer(),
        UsSsnRecognizer(),
        CryptoRecognizer(),
    )


def entity_types() -> list[str]:
    """The entity types the scan looks for."""
    return sorted({e for r in recognizers() for e in r.supported_entities})


def scan(text: str) -> list[Span]:
    """Flagged spans of `text`, in order; a span inside another one's (say, a URL inside an
    e-mail address) is dropped as the same finding."""
    found = [
        (hit.start, hit.end, hit.entity_type, float(hit.score))
        for recognizer in recognizers()
        for hit in recognizer.analyze(text, recognizer.supported_entities, None)
    ]
    found.sort(key=lambda f: (f[0], -f[1]))
    spans: list[Span] = []
    for start, end, entity, score in found:
        if spans and start >= spans[-1].start and end <= spans[-1].end:
            continue
        context = text[max(0, start - CONTEXT_CHARS) : end + CONTEXT_CHARS]
        spans.append(Span(entity, score, start, end, text[start:end], " ".join(context.split())))
    return spans

"""Accessibility checks for browser tests: axe-core (tests/e2e/vendor) run on a page as it is now.

Call `assert_accessible(page, "chat with a reply")` at any point of a Playwright test; it fails
with one readable entry per rule (impact, rule, help, help URL, targets) when axe finds a serious
or critical violation of WCAG 2.0/2.1/2.2 A and AA or of Deque's best practices. What axe could
not decide ("needs review") fails too, except colour contrast over backgrounds it cannot compute
(images, gradients, overlapping boxes): an ARIA attribute that screen readers ignore, say.

axe is injected with `page.evaluate`, which Playwright sends over the DevTools protocol: code run
that way is not subject to the page's Content-Security-Policy, so the page keeps its real policy
(a context with `bypass_csp=True` would test a page whose inline styles and scripts suddenly
work). axe itself never calls eval or adds a <style>, so it raises no violation of its own and
can run beside `CspWatch`.
"""

import functools
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa", "best-practice")
FAILING = ("critical", "serious")
# Their "needs review" results come from backgrounds axe cannot compute, not from the markup.
RENDERED = ("color-contrast", "color-contrast-enhanced", "link-in-text-block")
MAX_TARGETS = 5

RUN_AXE = """async ([tags]) => {
  const results = await window.axe.run(document, {
    runOnly: { type: "tag", values: tags },
    resultTypes: ["violations", "incomplete"],
  });
  const rows = (list, review) => list.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl, review: review,
    targets: v.nodes.map((n) => n.target.join(" ")),
    summary: v.nodes.length ? v.nodes[0].failureSummary || "" : "",
  }));
  return rows(results.violations, false).concat(rows(results.incomplete, true));
}"""


@functools.cache
def _axe_source() -> str:
    # A trailing expression, so Playwright evaluates the file as a script, not as a function.
    return AXE_JS.read_text() + "\n;true"


def axe_violations(page: Page, *, tags: tuple[str, ...] = TAGS) -> list[dict[str, Any]]:
    """Every axe violation and needs-review result on the page now: id, impact, help, helpUrl,
    review (true for needs review), targets, summary."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    return page.evaluate(RUN_AXE, [list(tags)])


def describe(violations: list[dict[str, Any]]) -> str:
    """One paragraph per violation, readable in a failed test's report."""
    lines = []
    for v in violations:
        targets = ", ".join(v["targets"][:MAX_TARGETS])
        more = len(v["targets"]) - MAX_TARGETS
        targets += f" (and {more} more)" if more > 0 else ""
        review = " (needs review)" if v["review"] else ""
        lines.append(f"- {v['impact']}{review}: {v['id']}: {v['help']} <{v['helpUrl']}>")
        lines.append(f"    on: {targets}")
        summary = " ".join(v["summary"].split())
        if summary:
            lines.append(f"    {summary}")
    return "\n".join(lines)


def assert_accessible(
    page: Page, name: str, *, impacts: tuple[str, ...] = FAILING, tags: tuple[str, ...] = TAGS
) -> list[dict[str, Any]]:
    """Fail when axe finds a violation of one of `impacts` on the page; return all it found."""
    found = axe_violations(page, tags=tags)
    failing = [
        v for v in found if v["impact"] in impacts and not (v["review"] and v["id"] in RENDERED)
    ]
    assert not failing, f"accessibility violations on {name} ({page.url}):\n{describe(failing)}"
    return found

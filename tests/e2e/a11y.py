"""Accessibility checks for browser tests: axe-core (tests/e2e/vendor) run on a page as it is now.

Call `assert_accessible(page, "chat with a reply")` at any point of a Playwright test; it fails
with one readable line per rule (impact, rule, help, help URL, targets) when axe finds a serious
or critical violation of WCAG 2.0/2.1/2.2 A and AA or of Deque's best practices.

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
MAX_TARGETS = 5

RUN_AXE = """async ([tags]) => {
  const results = await window.axe.run(document, {
    runOnly: { type: "tag", values: tags },
    resultTypes: ["violations"],
  });
  return results.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    targets: v.nodes.map((n) => n.target.join(" ")),
    summary: v.nodes.length ? v.nodes[0].failureSummary : "",
  }));
}"""


@functools.cache
def _axe_source() -> str:
    # A trailing expression, so Playwright evaluates the file as a script, not as a function.
    return AXE_JS.read_text() + "\n;true"


def axe_violations(page: Page, *, tags: tuple[str, ...] = TAGS) -> list[dict[str, Any]]:
    """Every axe violation on the page now: id, impact, help, helpUrl, targets, summary."""
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
        lines.append(f"- {v['impact']}: {v['id']}: {v['help']} <{v['helpUrl']}>")
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
    failing = [v for v in found if v["impact"] in impacts]
    assert not failing, f"accessibility violations on {name} ({page.url}):\n{describe(failing)}"
    return found

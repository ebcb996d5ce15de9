// Staff pages (monitor, report, training progress): small behaviours kept out of the markup, which
// the Content-Security-Policy keeps free of inline handlers and of htmx expressions (no eval).
(function () {
  "use strict";
  // A form with data-confirm asks before it submits.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    const question = form instanceof HTMLFormElement && form.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
  // An element with data-poll-visible polls only while the tab is visible (htmx keeps the timer).
  document.addEventListener("htmx:beforeRequest", (event) => {
    const elt = event.detail && event.detail.elt;
    if (elt && elt.hasAttribute("data-poll-visible") && document.visibilityState !== "visible") {
      event.preventDefault();
    }
  });
})();

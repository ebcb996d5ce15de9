// Participant pages other than the chat (which has its own socket heartbeat): tell the server
// every minute, while the tab is visible, whether the participant has been active, so that someone
// reading the consent or writing the final document is never marked abandoned or timed out.
(function () {
  "use strict";
  const url = document.body.dataset.aliveUrl;
  if (!url || document.getElementById("chat")) return;
  // A participant page other than the chat is before it (nothing drafted yet) or after it (final
  // step, done, ended), where the chat's unsent draft is of no more use: forget it.
  if (document.body.dataset.draftKey) localStorage.removeItem(document.body.dataset.draftKey);
  // The working document's unsaved copy (document.js) likewise, once no page shows the document.
  if (document.body.dataset.draftKey && !document.getElementById("document-pane")) {
    localStorage.removeItem(document.body.dataset.draftKey + ":document");
  }
  // The same CSRF header htmx sends (set on <body> by base.html).
  const token = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];
  let lastInput = Date.now();
  ["keydown", "mousemove", "scroll", "touchstart", "input"].forEach((e) =>
    document.addEventListener(e, () => { lastInput = Date.now(); }, { passive: true }));
  setInterval(() => {
    if (document.hidden || !token) return;
    const body = new URLSearchParams({ signal: Date.now() - lastInput < 60000 ? "active" : "idle" });
    fetch(url, { method: "POST", body: body, headers: { "X-CSRFToken": token }, credentials: "same-origin" })
      .catch(() => {});
  }, 60000);
})();

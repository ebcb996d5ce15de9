// The completion code page: a button that copies the code (the Clipboard API where the page may
// use it, else the selected text and execCommand) and says "Copied" in a polite live region.
(function () {
  "use strict";
  const button = document.getElementById("copy-code");
  const code = document.getElementById("completion-code");
  const status = document.getElementById("copy-status");
  if (!button || !code || !status) return;
  const gettext = window.gettext || ((s) => s);

  function selectCode() {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copyBySelection() {
    selectCode();
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  function tell(text) {
    // Emptied first so that a second click is announced again.
    status.textContent = "";
    setTimeout(() => { status.textContent = text; }, 50);
  }

  function fallback() {
    // When nothing could copy, the code stays selected for the participant to copy themselves.
    tell(copyBySelection() ? gettext("Copied")
      : gettext("Could not copy: the code is selected, copy it with your keyboard."));
  }

  button.hidden = false; // without this script the code is still there to copy by hand
  button.addEventListener("click", () => {
    const text = code.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => tell(gettext("Copied")), fallback);
    } else {
      fallback();
    }
  });
})();

// "I am done chatting" asks first: a modal <dialog> (Escape or "Keep chatting" cancels) says the
// chat will close. Without this script the button posts the form at once, as before.
(function () {
  "use strict";
  const form = document.getElementById("finish");
  const dialog = document.getElementById("finish-confirm");
  if (!form || !dialog || typeof dialog.showModal !== "function") return;
  const opener = document.getElementById("finish-open"), yes = document.getElementById("finish-yes");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (event.submitter !== yes) { dialog.showModal(); return; } // focus: "Keep chatting"
    yes.disabled = true;
    if (window.documentPane) await window.documentPane.flush();
    form.submit();
  });
  document.getElementById("finish-cancel").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => { if (!yes.disabled) opener.focus(); });
})();

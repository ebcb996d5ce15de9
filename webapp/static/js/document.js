// The working document beside the chat (and on the final page): saved without a button, as
// numbered versions. A save names the version it was edited from; when another tab saved first
// the server refuses it (409) with the newer text and the participant chooses which to keep.
// An unsaved copy stays in localStorage until the server has it, so a reload loses nothing.
// Also: the Chat | Document tabs of narrow screens, Write | Preview, and the Copy / Insert
// buttons of complete replies (chat.js fires "chat:reply-rendered" for each one it renders).
(function () {
  "use strict";
  const pane = document.getElementById("document-pane");
  if (!pane) return;
  const $ = (id) => document.getElementById(id);
  const gettext = window.gettext || ((s) => s);
  const fmt = (s, values) => (window.interpolate ? window.interpolate(s, values, true)
    : s.replace(/%\((\w+)\)s/g, (_, k) => values[k]));
  const area = $("document-text"), status = $("document-status"), conflict = $("document-conflict");
  const SAVE_AFTER_MS = 1000, RETRY_MS = 5000;
  const csrf = (() => {
    try { return JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]; }
    catch (e) { return ""; }
  })();
  const localKey = document.body.dataset.draftKey ? document.body.dataset.draftKey + ":document" : null;
  const normal = (text) => text.replace(/\r\n?/g, "\n");

  let version = Number(pane.dataset.version || 0);
  let saved = normal(area.value); // the text of `version` on the server
  let timer = null, chain = Promise.resolve(), newer = null, touched = false, leaving = false;
  let pendingInsert = null; // the reply of an insert not yet saved: the next save records it

  const dirty = () => normal(area.value) !== saved;
  function say(text) { if (status.textContent !== text) status.textContent = text; }

  function keepLocal() {
    if (!localKey) return;
    try {
      if (dirty() || newer) localStorage.setItem(localKey, JSON.stringify({ text: area.value, base: version }));
      else localStorage.removeItem(localKey);
    } catch (e) { /* storage full or disabled: the server copy is all there is */ }
  }

  function form(text, source, messageId) {
    const data = new FormData();
    data.append("text", text);
    data.append("base_version", String(version));
    data.append("source", source);
    if (messageId) data.append("from_message_id", String(messageId));
    return data;
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(() => save("typed"), ms);
  }

  // Saves run one after another, so each names the version the previous one made.
  function save(source, messageId) {
    clearTimeout(timer);
    chain = chain.then(() => saveNow(source, messageId));
    return chain;
  }

  async function saveNow(source, messageId) {
    if (newer || leaving) return; // a conflict waits for the participant's choice
    if (messageId) pendingInsert = messageId;
    else if (pendingInsert) { source = "inserted"; messageId = pendingInsert; }
    const text = normal(area.value);
    if (text === saved && !messageId) return;
    say(gettext("Saving…"));
    let response, data = {};
    try {
      response = await fetch(pane.dataset.saveUrl, {
        method: "POST", body: form(text, source, messageId),
        headers: { "X-CSRFToken": csrf }, credentials: "same-origin",
      });
      data = await response.json();
    } catch (e) {
      say(gettext("Not saved: no connection. Your text is kept on this device; trying again…"));
      schedule(RETRY_MS);
      return;
    }
    if (response.ok) {
      version = data.version;
      saved = text;
      pendingInsert = null;
      keepLocal();
      if (dirty()) schedule(SAVE_AFTER_MS); else say(gettext("Saved."));
    } else if (response.status === 409) {
      showConflict(data);
    } else {
      say(fmt(gettext("Not saved: %(reason)s"), { reason: data.message || response.statusText }));
      if (response.status === 429) schedule(RETRY_MS);
      else pendingInsert = null; // refused for good (e.g. that reply cannot be inserted)
    }
  }

  function showConflict(data) {
    newer = data;
    keepLocal();
    $("document-newer").textContent = data.text;
    conflict.hidden = false;
    say(gettext("Not saved: this document was changed in another tab."));
  }

  function resolve(useNewer) {
    const theirs = newer;
    newer = null;
    conflict.hidden = true;
    version = theirs.version;
    saved = normal(theirs.text);
    if (useNewer) { area.value = theirs.text; pendingInsert = null; say(gettext("Saved.")); }
    keepLocal();
    area.focus();
    if (!useNewer) save("typed"); // on top of the newer version
  }
  $("document-use-newer").addEventListener("click", () => resolve(true));
  $("document-keep-mine").addEventListener("click", () => resolve(false));

  // A copy left by a reload or a crash: restore it; if another version was saved meanwhile, the
  // save is refused and the conflict notice offers both texts.
  function restoreLocal() {
    if (!localKey) return;
    let copy = null;
    try { copy = JSON.parse(localStorage.getItem(localKey)); } catch (e) { copy = null; }
    if (!copy || typeof copy.text !== "string" || typeof copy.base !== "number") return;
    if (normal(copy.text) === saved) { keepLocal(); return; }
    area.value = copy.text;
    version = copy.base;
    if (copy.base !== Number(pane.dataset.version || 0)) saved = null; // refused as stale, shown
    save("typed");
  }

  area.addEventListener("focus", () => { touched = true; });
  area.addEventListener("input", () => { keepLocal(); schedule(SAVE_AFTER_MS); });
  area.addEventListener("paste", () => setTimeout(() => save("pasted"), 0));
  area.addEventListener("blur", (event) => {
    // Focus moving to the final page's Submit: the form sends the text as the final version.
    const to = event.relatedTarget;
    if (area.form && to && to.type === "submit" && to.form === area.form) return;
    if (dirty()) save("typed");
  });

  function beacon() {
    if (leaving || newer || !dirty() || !navigator.sendBeacon) return;
    const data = form(normal(area.value), pendingInsert ? "inserted" : "typed", pendingInsert);
    data.append("csrfmiddlewaretoken", csrf);
    navigator.sendBeacon(pane.dataset.saveUrl, data); // the local copy stays until a load sees it
  }
  window.addEventListener("pagehide", beacon);
  document.addEventListener("visibilitychange", () => { if (document.hidden) beacon(); });
  // The final page's form sends the text itself, with the version it was edited from (a newer
  // one from another tab refuses it): no autosave may race it, and one under way is awaited
  // (briefly) so that the version sent is the one it made.
  // (submit(), not requestSubmit(): the form was validated, and the latter is ignored while
  // the submit event is still being dispatched.)
  if (area.form) {
    area.form.addEventListener("submit", (event) => {
      event.preventDefault();
      leaving = true;
      clearTimeout(timer);
      Promise.race([chain.catch(() => {}), new Promise((ok) => setTimeout(ok, 3000))]).then(() => {
        $("document-version").value = String(version);
        area.form.submit();
      });
    });
  }

  // Tabs (WAI-ARIA tabs pattern): click or arrow keys; `panels` false leaves showing to CSS.
  function tabs(list, onSelect, panels) {
    const all = [...list.querySelectorAll('[role="tab"]')];
    function select(tab, focus) {
      all.forEach((t) => {
        const on = t === tab;
        t.setAttribute("aria-selected", String(on));
        t.tabIndex = on ? 0 : -1;
        if (panels) $(t.getAttribute("aria-controls")).hidden = !on;
      });
      if (focus) tab.focus();
      onSelect(tab);
    }
    list.addEventListener("click", (e) => { const t = e.target.closest('[role="tab"]'); if (t) select(t, false); });
    list.addEventListener("keydown", (e) => {
      const i = all.indexOf(document.activeElement);
      const j = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[e.key];
      if (i < 0 || j === undefined) return;
      e.preventDefault();
      select(all[(j + all.length) % all.length], true);
    });
    list.hidden = false;
    return select;
  }

  const preview = $("doc-preview");
  tabs(pane.querySelector(".doc-tabs"), async (tab) => {
    if (tab.id !== "doc-tab-preview") return;
    preview.textContent = gettext("Loading the preview…");
    const data = new FormData();
    data.append("text", area.value);
    try {
      const response = await fetch(pane.dataset.previewUrl, {
        method: "POST", body: data, headers: { "X-CSRFToken": csrf }, credentials: "same-origin",
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.message);
      preview.innerHTML = body.html; // rendered and sanitised server-side (markdown-it + nh3)
    } catch (e) {
      preview.textContent = gettext("The preview is not available right now; your text is safe.");
    }
  }, true);

  const workspace = $("workspace"), workspaceTabs = workspace && workspace.querySelector(".workspace-tabs");
  let showTab = null;
  if (workspaceTabs) {
    const narrow = window.matchMedia("(max-width: 59.99rem)");
    const panelsOf = [...workspaceTabs.querySelectorAll('[role="tab"]')]
      .map((t) => [t, $(t.getAttribute("aria-controls"))]);
    const roles = () => panelsOf.forEach(([t, panel]) => {
      if (narrow.matches) { panel.setAttribute("role", "tabpanel"); panel.setAttribute("aria-labelledby", t.id); }
      else { panel.removeAttribute("role"); panel.removeAttribute("aria-labelledby"); }
    });
    narrow.addEventListener("change", roles);
    roles();
    showTab = tabs(workspaceTabs, (tab) => {
      workspace.dataset.tab = tab.id === "tab-document" ? "document" : "chat";
    }, false);
  }

  // A rating due blocks the chat: on narrow screens, bring the Chat tab forward for it.
  const rating = $("rating");
  if (rating && showTab) {
    new MutationObserver(() => {
      if (rating.hidden || workspace.dataset.tab !== "document") return;
      showTab($("tab-chat"), false);
      rating.querySelector("button").focus();
    }).observe(rating, { attributes: true, attributeFilter: ["hidden"] });
  }

  function actionButton(label, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small";
    button.textContent = label;
    button.addEventListener("click", async () => {
      const done = await onClick();
      if (!done) return;
      button.textContent = done;
      setTimeout(() => { button.textContent = label; }, 2000);
    });
    return button;
  }

  async function insertReply(message) {
    await save("typed"); // typed changes first, so that the insert is a version of its own
    if (newer) return "";
    const text = message.text || "";
    const start = touched ? area.selectionStart : area.value.length;
    const end = touched ? area.selectionEnd : start;
    const before = area.value.slice(0, start), after = area.value.slice(end);
    const gap = !before || before.endsWith("\n\n") ? "" : before.endsWith("\n") ? "\n" : "\n\n";
    area.value = before + gap + text + after;
    const caret = (before + gap + text).length;
    area.setSelectionRange(caret, caret);
    keepLocal();
    await save("inserted", message.id);
    return gettext("Inserted");
  }

  async function copyReply(message) {
    try {
      await navigator.clipboard.writeText(message.text || "");
      return gettext("Copied");
    } catch (e) {
      return gettext("Copy not allowed: select the text instead");
    }
  }

  document.addEventListener("chat:reply-rendered", (event) => {
    const li = event.detail.element, message = event.detail.message;
    if (li.querySelector(".reply-actions")) return;
    const box = document.createElement("div");
    box.className = "reply-actions";
    box.append(actionButton(gettext("Copy"), () => copyReply(message)),
      actionButton(gettext("Insert into document"), () => insertReply(message)));
    li.append(box);
  });

  // For the finish confirmation: wait (briefly) until the document is saved before leaving.
  window.documentPane = {
    flush: () => Promise.race([save("typed"), new Promise((ok) => setTimeout(ok, 3000))]),
    show: () => { if (showTab) showTab($("tab-document"), false); },
  };

  // A final submission refused as stale comes back with the newer text: offer the choice.
  if (conflict.dataset.newerVersion) {
    showConflict({ version: Number(conflict.dataset.newerVersion), text: $("document-newer").textContent });
  }
  restoreLocal();
})();

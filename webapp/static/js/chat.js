// The chat page: one websocket, frames in JSON. The server owns every rule (turn limits, ratings,
// finishing); this script only renders what the server says and never loses a draft.
(function () {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  // Django's JavaScript catalog (jsi18n) provides gettext/interpolate; plain English without it.
  // Strings are written as gettext("...") so that `makemessages -d djangojs` finds them.
  const gettext = window.gettext || ((s) => s);
  const fmt = (s, values) => (window.interpolate ? window.interpolate(s, values, true)
    : s.replace(/%\((\w+)\)s/g, (_, k) => values[k]));
  const list = $("messages"), composer = $("composer"), textarea = $("composer-text");
  const rating = $("rating"), finish = $("finish"), alerts = $("alerts");
  const connection = $("connection"), progress = $("progress"), announcer = $("announcer");
  const clock = $("clock"), counter = $("char-count");
  // The unsent draft, per participant (an opaque key from the server), as {text, key}: key is the
  // idempotency key of a message sent but not yet acknowledged, so a reload resends it as the
  // same message and the server stores it once.
  const draftKey = document.body.dataset.draftKey;
  const heartbeatMs = 1000 * Number(root.dataset.heartbeat || 15);
  const bubbles = new Map(); // message id -> {el, text, status, finish, continues}
  let socket = null, retryDelay = 500, pending = null, ratingDue = null, streaming = false;
  let lastInput = Date.now(), lastFrame = Date.now(), announced = new Map();
  let minChars = 0, deadline = null, warningMs = 0, warned = false, timeUp = false;

  function loadDraft() {
    let draft = null;
    try { draft = JSON.parse(localStorage.getItem(draftKey)); } catch (e) { draft = null; }
    if (!draft || typeof draft.text !== "string") return;
    textarea.value = draft.text;
    if (typeof draft.key === "string" && draft.text.trim()) {
      pending = { type: "send", text: draft.text.trim(), key: draft.key };
    }
  }

  function saveDraft() {
    if (!draftKey) return;
    const text = textarea.value;
    if (!text && !pending) { localStorage.removeItem(draftKey); return; }
    const key = pending && text.trim() === pending.text ? pending.key : null;
    localStorage.setItem(draftKey, JSON.stringify({ text: text, key: key }));
  }

  function clearDraft() { if (draftKey) localStorage.removeItem(draftKey); }

  if (draftKey) loadDraft();
  textarea.addEventListener("input", saveDraft);

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
    socket.onopen = () => {
      retryDelay = 500;
      connection.textContent = gettext("Connected.");
      root.dataset.connected = "true";
      if (pending) send(pending); // same idempotency key: the server will not store it twice
      presence(document.hidden ? "hidden" : "visible");
    };
    socket.onmessage = (event) => handle(JSON.parse(event.data));
    socket.onclose = (event) => {
      root.dataset.connected = "false";
      continuing = null; // a Continue in flight may be lost: the state after reconnecting decides
      if (event.code === 4403) { location.reload(); return; }
      connection.textContent = gettext("Reconnecting… your messages are safe.");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
    };
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function presence(signal) { send({ type: "presence", signal: signal }); }

  function bubble(m) {
    let b = bubbles.get(m.id);
    if (!b) {
      const li = document.createElement("li");
      li.className = "message " + m.role;
      // The <ol>'s role is "log", not "list": an <li> there must not claim to be a list item.
      li.setAttribute("role", "none");
      li.dataset.id = m.id;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = m.role === "user" ? gettext("You") : gettext("Assistant");
      const body = document.createElement("div");
      body.className = "body";
      li.append(who, body);
      list.append(li);
      b = { el: li, body: body, text: "", status: m.status };
      bubbles.set(m.id, b);
    }
    return b;
  }

  function render(m) {
    const b = bubble(m);
    b.status = m.status;
    b.text = m.text || "";
    b.el.dataset.status = m.status;
    if (m.finish_reason !== undefined) b.finish = m.finish_reason;
    if (m.continuation_of) markContinued(b, m.continuation_of);
    if (m.html !== undefined) b.body.innerHTML = m.html; // sanitised server-side (markdown-it + nh3)
    else b.body.textContent = b.text;
    b.el.querySelectorAll(".failure").forEach((n) => n.remove());
    if (m.status === "failed" || m.status === "interrupted") showFailure(b, m);
    if (m.status !== "streaming" && root.dataset.saving === String(m.id)) saved();
    if (m.role === "assistant" && m.status === "complete") document.dispatchEvent(new CustomEvent("chat:reply-rendered", { detail: { element: b.el, message: m } })); // document.js
    return b;
  }

  // A continuation of a cut reply: its own bubble, directly below the reply, marked as such.
  function markContinued(b, of) {
    if (b.continues === of) return;
    b.continues = of;
    b.el.classList.add("continued");
    b.el.dataset.continues = of;
    b.el.querySelector(".who").textContent = gettext("Assistant (continued)");
  }

  // Under the last part of a reply cut at the token limit: a notice, and the Continue button
  // when the server says this reply may be continued now.
  let continuing = null;
  function showCutNotices() {
    list.querySelectorAll(".cut-notice").forEach((n) => n.remove());
    const continued = new Set();
    bubbles.forEach((b) => { if (b.continues && b.status === "complete") continued.add(b.continues); });
    bubbles.forEach((b, id) => {
      if (b.status !== "complete" || b.finish !== "length" || continued.has(id)) return;
      const box = document.createElement("div");
      box.className = "cut-notice";
      const p = document.createElement("p");
      p.textContent = gettext("This reply was cut off at the length limit.");
      box.append(p);
      if (last.continuable === id && !streaming) {
        const more = document.createElement("button");
        more.type = "button";
        more.className = "continue";
        more.textContent = gettext("Continue");
        more.disabled = continuing === id || Boolean(pending);
        more.onclick = () => {
          more.disabled = true;
          continuing = id;
          send({ type: "continue", message_id: id });
        };
        box.append(more);
      }
      b.el.append(box);
    });
  }

  // Only the last reply can be retried (the server refuses any other): a failed continuation
  // that a new turn left behind keeps its message but loses its button.
  function dropStaleRetries() {
    const replies = list.querySelectorAll("li.message.assistant");
    const lastReply = replies[replies.length - 1];
    list.querySelectorAll(".failure .retry").forEach((n) => {
      if (n.closest("li") !== lastReply) n.remove();
    });
  }

  function showFailure(b, m) {
    const box = document.createElement("div");
    box.className = "failure";
    const p = document.createElement("p");
    p.textContent = m.message || gettext("The assistant's reply did not finish.");
    const retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = gettext("Retry this reply");
    retry.className = "retry";
    retry.onclick = () => { retry.disabled = true; send({ type: "retry", message_id: m.id }); };
    box.append(p, retry);
    b.el.append(box);
  }

  function announce(id, text, done) {
    // Read finished sentences aloud as they arrive, not every token.
    const said = announced.get(id) || 0;
    const cut = done ? text.length : Math.max(text.lastIndexOf(". "), text.lastIndexOf("\n")) + 1;
    if (cut > said) {
      const p = document.createElement("p");
      p.textContent = text.slice(said, cut);
      announcer.append(p);
      announced.set(id, cut);
    }
  }

  function setControls(state) {
    ratingDue = state.rating_due;
    streaming = [...bubbles.values()].some((b) => b.status === "streaming");
    minChars = state.min_chars || 0;
    timeUp = Boolean(state.time_up);
    const ratingWasOpen = !rating.hidden, ratingHadFocus = rating.contains(document.activeElement);
    rating.hidden = ratingDue === null || ratingDue === undefined;
    composer.hidden = !rating.hidden || state.status !== "chatting" || timeUp;
    textarea.disabled = $("send").disabled = streaming;
    finish.hidden = !state.can_finish || streaming;
    progress.textContent = fmt(gettext("Turns completed: %(done)s of at least %(min)s."),
      { done: state.completed_turns, min: state.min_turns });
    if (timeUp) showTimeUp();
    showCutNotices();
    dropStaleRetries();
    updateCount();
    updateCountdown();
    updateWriting();
    if (!rating.hidden && !ratingWasOpen) openRating();
    if (rating.hidden && ratingWasOpen && ratingHadFocus && !composer.hidden) textarea.focus();
  }

  function updateCount() {
    if (!counter) return;
    // Only once something is typed: an empty box gets no nagging.
    const n = textarea.value.trim().length;
    counter.textContent = minChars > n && textarea.value.length > 0
      ? fmt(gettext("%(n)s characters; at least %(min)s needed."), { n: n, min: minChars }) : "";
  }

  function say(el, text) { if (el.textContent !== text) el.textContent = text; } // no re-announcing

  function showTimeUp() {
    clock.hidden = false;
    say(clock, gettext("Your time for the chat is up. Please continue to the final questions."));
    const hadFocus = composer.contains(document.activeElement);
    composer.hidden = true;
    // A rating still due must be given first (the server refuses finishing until then).
    if (!streaming && (ratingDue === null || ratingDue === undefined)) {
      finish.hidden = false;
      if (hadFocus) finish.querySelector("button").focus();
    }
  }

  function tick() {
    if (deadline === null || timeUp) return;
    const left = deadline - Date.now();
    updateCountdown();
    if (left <= 0) { timeUp = true; send({ type: "sync" }); showTimeUp(); return; }
    if (left <= warningMs) {
      const minutes = Math.ceil(left / 60000);
      clock.hidden = false;
      say(clock, fmt(gettext("About %(m)s minute(s) left for the chat."), { m: minutes }));
      if (!warned) { warned = true; alerts.textContent = clock.textContent; }
    }
  }

  function saved() {
    delete root.dataset.saving;
    say(connection, gettext("Connected."));
  }

  let last = {};
  function handle(f) {
    lastFrame = Date.now();
    if (f.type === "state") {
      list.replaceChildren(); bubbles.clear();
      f.messages.forEach(render);
      last = f;
      // seconds_left counts from this frame's arrival: only a fresh state moves the deadline
      // (setControls also runs on `last` after a reply, long after it arrived).
      if (f.seconds_left !== null && f.seconds_left !== undefined) {
        deadline = Date.now() + 1000 * f.seconds_left;
        warningMs = 1000 * (f.warning_seconds || 0);
      }
      setControls(f);
    } else if (f.type === "ack") {
      if (pending && pending.key === f.key) { pending = null; textarea.value = ""; clearDraft(); }
      render(f.message);
    } else if (f.type === "started") {
      if (f.user) render(f.user);
      render(f.message);
      alerts.textContent = "";
      last.continuable = null;
      continuing = null;
      setControls(last);
    } else if (f.type === "delta") {
      const b = bubble({ id: f.id, role: "assistant", status: "streaming" });
      // start counts UTF-16 code units, as b.text.length and slice do (an emoji is two).
      if (f.full !== undefined) b.text = f.full;
      else if (f.start <= b.text.length) b.text = b.text.slice(0, f.start) + f.delta;
      else return; // a gap: the next checkpoint frame carries the whole text
      b.body.textContent = b.text;
      announce(f.id, b.text, false);
    } else if (f.type === "busy") {
      // All stream slots are taken; the server retries by itself. Said once, politely, and
      // replaced by the reply's text as soon as it starts.
      const b = bubble({ id: f.id, role: "assistant", status: "streaming" });
      const notice = gettext("The assistant is busy; retrying…");
      if (!b.text) b.body.textContent = notice;
      if (!announced.has("busy:" + f.id)) {
        announced.set("busy:" + f.id, 1);
        const p = document.createElement("p");
        p.textContent = notice;
        announcer.append(p);
      }
    } else if (f.type === "saving") {
      // The reply is finished but not yet stored (the database is away): the server keeps it
      // (held in Redis, or only in its memory when Redis is away too) and stores it as soon as
      // it can; the text stays on screen meanwhile.
      const b = bubble({ id: f.id, role: "assistant", status: "streaming" });
      b.text = f.text;
      b.body.textContent = b.text;
      root.dataset.saving = String(f.id);
      say(connection, f.held === false
        ? gettext("Saving the reply… it will be stored as soon as the server can.")
        : gettext("Saving the reply… it is kept and will be stored in a moment."));
    } else if (f.type === "complete") {
      render(f.message);
      announce(f.message.id, f.message.text, true);
      if (f.message.finish_reason === "length") {
        const p = document.createElement("p");
        p.textContent = gettext("This reply was cut off at the length limit.");
        announcer.append(p);
      }
      if (f.status === undefined) { send({ type: "sync" }); return; } // stored late: no counters
      // The frame carries the rendered reply and the counters: no need to fetch the whole chat.
      last.status = f.status;
      last.completed_turns = f.completed_turns;
      last.rating_due = f.rating_due;
      last.continuable = f.continuable ? f.message.id : null;
      last.can_finish = f.status === "chatting" && (f.completed_turns >= last.min_turns || timeUp);
      setControls(last);
    } else if (f.type === "failed") {
      render({ id: f.id, role: "assistant", status: "failed", text: f.text, message: f.message });
      alerts.textContent = f.message;
      send({ type: "sync" });
    } else if (f.type === "rated") {
      send({ type: "sync" });
    } else if (f.type === "error") {
      alerts.textContent = f.message;
      if (continuing !== null) { continuing = null; send({ type: "sync" }); } // refused: fresh state
      if (pending && f.key === pending.key) { pending = null; saveDraft(); } // refused: kept in the box
    }
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textarea.value.trim();
    if (!text || pending) return;
    if (text.length < minChars) {
      alerts.textContent = fmt(gettext("Please write at least %(min)s characters so the assistant can help you."), { min: minChars });
      return;
    }
    pending = { type: "send", text: text, key: crypto.randomUUID() };
    saveDraft();
    send(pending);
  });
  textarea.addEventListener("input", updateCount);
  textarea.addEventListener("paste", (event) => {
    if (!last.detect_paste) return;
    const pasted = (event.clipboardData && event.clipboardData.getData("text")) || "";
    send({ type: "paste", chars: pasted.length });
  });
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); composer.requestSubmit(); }
  });
  // The rating: a radio group with nothing chosen, sent only by its Submit button once a value
  // is chosen; the heading takes focus when the panel opens, so a stray Enter records nothing.
  const ratingForm = $("rating-form"), ratingSubmit = $("rating-submit");
  const chosenScore = () => {
    const checked = ratingForm.querySelector('input[name="score"]:checked');
    return checked ? Number(checked.value) : null;
  };
  function openRating() {
    ratingForm.reset();
    ratingSubmit.disabled = true;
    $("rating-title").focus();
  }
  ratingForm.addEventListener("change", () => { ratingSubmit.disabled = chosenScore() === null; });
  ratingForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const score = chosenScore();
    if (score === null || ratingDue === null || ratingDue === undefined) {
      alerts.textContent = gettext("Please choose a rating from 1 to 10 first.");
      return;
    }
    send({ type: "rating", after_turn: ratingDue, score: score });
  });

  // The countdown: mm:ss left in a role="timer" element (not a live region: screen readers are
  // not told every second; the warning before the end is said once, in tick).
  const countdown = $("countdown");
  function updateCountdown() {
    if (!countdown) return;
    if (deadline === null || timeUp) { countdown.hidden = true; return; }
    const seconds = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    const mmss = String(Math.floor(seconds / 60)).padStart(2, "0") + ":"
      + String(seconds % 60).padStart(2, "0");
    countdown.hidden = false;
    say(countdown, fmt(gettext("Time left: %(time)s"), { time: mmss }));
  }

  // "The assistant is writing…" from a send until the reply's first words are on screen (or the
  // send is refused); said once per reply to screen readers.
  const writing = $("writing");
  let awaitingFrom = null, writingSaid = false;
  function assistantBubbles() {
    return [...bubbles.values()].filter((b) => b.el.classList.contains("assistant"));
  }
  function updateWriting() {
    const replies = assistantBubbles();
    if (awaitingFrom !== null && replies.length > awaitingFrom) awaitingFrom = null;
    const show = awaitingFrom !== null
      || replies.some((b) => b.status === "streaming" && !b.body.textContent);
    if (show && !writingSaid) {
      writingSaid = true;
      const p = document.createElement("p");
      p.textContent = writing.textContent;
      announcer.append(p);
    }
    if (!show && replies.some((b) => b.body.textContent)) writingSaid = false;
    writing.hidden = !show;
  }
  composer.addEventListener("submit", () => {
    if (pending && awaitingFrom === null) { awaitingFrom = assistantBubbles().length; updateWriting(); }
  });
  new MutationObserver(() => {
    if (awaitingFrom !== null && alerts.textContent) awaitingFrom = null; // refused
    updateWriting();
  }).observe(alerts, { childList: true, characterData: true, subtree: true });

  // Auto-scroll: the conversation follows the streaming reply until the participant scrolls up;
  // then a button brings them back to the latest message (and following resumes).
  const jump = $("jump");
  let follow = true;
  const atLatest = () => list.scrollHeight - list.scrollTop - list.clientHeight < 24;
  function toLatest() { list.scrollTop = list.scrollHeight; }
  list.addEventListener("scroll", () => {
    follow = atLatest();
    if (follow) jump.hidden = true;
  }, { passive: true });
  // A wheel or key scroll up stops following at once, before the next frame can scroll back.
  list.addEventListener("wheel", (event) => { if (event.deltaY < 0) follow = false; }, { passive: true });
  list.addEventListener("keydown", (event) => {
    if (["ArrowUp", "PageUp", "Home"].includes(event.key)) follow = false;
  });
  jump.addEventListener("click", () => {
    follow = true;
    toLatest();
    jump.hidden = true;
    list.focus({ preventScroll: true });
  });
  new MutationObserver(() => {
    if (follow) toLatest();
    else if (!atLatest()) jump.hidden = false;
    updateWriting();
  }).observe(list, { childList: true, characterData: true, subtree: true });

  ["keydown", "mousemove", "scroll", "touchstart"].forEach((e) =>
    document.addEventListener(e, () => { lastInput = Date.now(); }, { passive: true }));
  document.addEventListener("visibilitychange", () => presence(document.hidden ? "hidden" : "visible"));
  setInterval(() => {
    if (document.hidden) return;
    const busy = streaming || Date.now() - lastInput < heartbeatMs;
    presence(busy ? "active" : "idle");
  }, heartbeatMs);

  // Frames are delivered at most once; if a streaming reply goes quiet, ask for the whole state.
  setInterval(() => {
    if (streaming && Date.now() - lastFrame > 5000) { lastFrame = Date.now(); send({ type: "sync" }); }
  }, 2000);

  setInterval(tick, 1000);
  connect();
})();

// The "busy, retrying" page (webapp/busy.py): a GET reloads itself after Retry-After seconds plus
// random jitter, so a burst that found no database connection does not come back all at once.
// A POST page only offers its form again: the participant decides to send it.
(function () {
  "use strict";
  const busy = document.getElementById("busy");
  if (!busy || !busy.dataset.reload) return;
  const seconds = Number(busy.dataset.retryAfter) || 5;
  const delay = (seconds + Math.random() * seconds) * 1000;
  setTimeout(() => { window.location.reload(); }, delay);
})();

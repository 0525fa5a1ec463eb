// ship web UI: optional niceties; every page and form works without this script.
"use strict";
// Ask before a rollback, a lock or an unlock is sent.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
// Pages of a pipeline that is moving reload themselves, unless someone is typing.
const every = Number(document.body.dataset.refresh || 0);
if (every > 0) {
  let typed = false;
  document.addEventListener("input", () => { typed = true; });
  setInterval(() => {
    const busy = typed || (document.activeElement && document.activeElement.form);
    if (!busy && document.visibilityState === "visible") window.location.reload();
  }, every * 1000);
}

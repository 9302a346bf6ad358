// Live views: htmx's ws extension pushes partials; while the socket is down, elements with
// hx-trigger="every 5s" data-live-fallback poll the same partial URL instead.
window.btardLiveOpen = false;
document.addEventListener("htmx:wsOpen", function () { window.btardLiveOpen = true; document.body.dataset.live = "open"; });
document.addEventListener("htmx:wsClose", function () { window.btardLiveOpen = false; document.body.dataset.live = "closed"; });
document.addEventListener("htmx:wsError", function () { window.btardLiveOpen = false; document.body.dataset.live = "error"; });
// Under the production Content-Security-Policy (no 'unsafe-eval', btard_site.security) htmx must not
// compile the "[!window.btardLiveOpen]" trigger filters with Function(): the same rule is applied here,
// so polling runs only while the live socket is down.
if (window.htmx) { window.htmx.config.allowEval = false; }
document.addEventListener("htmx:beforeRequest", function (evt) {
  var elt = evt.detail && evt.detail.elt;
  var trigger = (elt && elt.getAttribute && elt.getAttribute("hx-trigger")) || "";
  var fallback = elt && elt.hasAttribute && elt.hasAttribute("data-live-fallback");
  if (window.btardLiveOpen && (fallback || trigger.indexOf("btardLiveOpen") !== -1)) { evt.preventDefault(); }
});

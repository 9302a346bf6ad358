// Live views: htmx's ws extension pushes partials; while the socket is down, elements with
// hx-trigger="every 5s [!window.btardLiveOpen]" poll the same partial URL instead.
window.btardLiveOpen = false;
document.addEventListener("htmx:wsOpen", function () { window.btardLiveOpen = true; document.body.dataset.live = "open"; });
document.addEventListener("htmx:wsClose", function () { window.btardLiveOpen = false; document.body.dataset.live = "closed"; });
document.addEventListener("htmx:wsError", function () { window.btardLiveOpen = false; document.body.dataset.live = "error"; });

// Run page charts (uPlot, vendored in static/vendor/uplot): loss, accuracy and throughput against step,
// with bans marked as red vertical lines. The data comes from <script type="application/json"
// id="run-chart-data"> inside the dashboard; every live push (or poll) of the dashboard brings a new
// copy, and the charts (kept across swaps by hx-preserve) redraw from it.
(function () {
  "use strict";
  var charts = {};
  var bans = [];
  // whole steps only on the x axis
  var STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000];
  var SPECS = [
    {id: "chart-loss", key: "loss", label: "loss", unit: "", color: "#1d2330", range: null, digits: null},
    {id: "chart-accuracy", key: "accuracy", label: "accuracy", unit: "", color: "#1a8f3a", range: [0, 1], digits: 3},
    {id: "chart-throughput", key: "throughput", label: "throughput", unit: "samples/s", color: "#2b5fd9", range: null,
     digits: null},
  ];

  function readData() {
    var el = document.getElementById("run-chart-data");
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function banPlugin() {
    return {hooks: {draw: [function (u) {
      var ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
      ctx.save();
      ctx.strokeStyle = "#c62828";
      ctx.fillStyle = "#c62828";
      ctx.lineWidth = Math.max(1, devicePixelRatio);
      ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.font = (10 * devicePixelRatio) + "px system-ui, sans-serif";
      bans.forEach(function (b) {
        var x = Math.round(u.valToPos(b.step, "x", true));
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
        ctx.beginPath();
        ctx.moveTo(x, top);
        ctx.lineTo(x, top + height);
        ctx.stroke();
        ctx.fillText("ban " + b.account, x + 3 * devicePixelRatio, top + 11 * devicePixelRatio);
      });
      ctx.restore();
    }]}};
  }

  function width(el) { return Math.max(260, Math.floor(el.getBoundingClientRect().width || 600)); }

  function make(spec, data) {
    var el = document.getElementById(spec.id);
    if (!el || !window.uPlot) return null;
    var fmt = function (u, v) {
      if (v == null) return "–";
      var text = spec.digits === null ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) : v.toFixed(spec.digits);
      return text + (spec.unit ? " " + spec.unit : "");
    };
    var opts = {
      width: width(el), height: 220,
      title: spec.label + (spec.unit ? " (" + spec.unit + ")" : ""),
      scales: {x: {time: false}, y: spec.range ? {range: spec.range} : {}},
      series: [
        {label: "step", value: function (u, v) { return v == null ? "–" : String(v); }},
        {label: spec.label, stroke: spec.color, width: 1.5, spanGaps: true, value: fmt,
         points: {show: spec.key === "accuracy"}},
      ],
      axes: [
        {label: "step", stroke: "#444", grid: {stroke: "#eceef4"}, incrs: STEP_INCRS,
         values: function (u, vals) { return vals.map(function (v) { return String(v); }); }},
        {label: spec.label + (spec.unit ? " (" + spec.unit + ")" : ""), stroke: "#444", grid: {stroke: "#eceef4"},
         size: 60},
      ],
      legend: {live: true},
      plugins: [banPlugin()],
    };
    el.textContent = "";
    return new window.uPlot(opts, [data.step, data[spec.key]], el);
  }

  var lastSource = null;

  function render() {
    lastSource = document.getElementById("run-chart-data");
    var data = readData();
    if (!data || !document.getElementById("run-charts")) return;
    bans = data.bans || [];
    var box = document.getElementById("run-charts");
    box.dataset.points = String(data.step.length);
    box.dataset.bans = String(bans.length);
    SPECS.forEach(function (spec) {
      if (charts[spec.key]) {
        charts[spec.key].setData([data.step, data[spec.key]]);
      } else {
        charts[spec.key] = make(spec, data);
      }
    });
    box.dataset.ready = "1";
  }

  function resize() {
    SPECS.forEach(function (spec) {
      var u = charts[spec.key], el = document.getElementById(spec.id);
      if (u && el) u.setSize({width: width(el), height: 220});
    });
  }

  window.btardCharts = charts;
  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:oobAfterSwap", function (e) { if (e.detail.target && e.detail.target.id === "run-dashboard") render(); });
  document.addEventListener("htmx:afterSettle", function (e) { if (document.getElementById("run-chart-data")) render(); });
  // a swap that raised no event above still replaces the data element: pick it up
  setInterval(function () {
    var el = document.getElementById("run-chart-data");
    if (el && el !== lastSource) render();
  }, 1000);
  var timer = null;
  window.addEventListener("resize", function () { clearTimeout(timer); timer = setTimeout(resize, 150); });
})();

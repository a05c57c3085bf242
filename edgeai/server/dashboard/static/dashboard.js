// edgeai dashboard: draws each run's accuracy and ε plots with the vendored uPlot, and
// reloads the page every data-refresh-s seconds (not while the operator types a filter).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("chart-data").textContent || "[]");
  var SERIES = {
    accuracy: [{ label: "accuracy", stroke: "#2b6cb0", width: 2 }],
    epsilon: [
      { label: "ε (device)", stroke: "#c05621", width: 2 },
      { label: "ε (client)", stroke: "#6b46c1", width: 2, dash: [6, 4] },
    ],
  };

  function draw(el) {
    var run = null;
    for (var i = 0; i < data.length; i++) {
      if (String(data[i].id) === el.dataset.run) { run = data[i]; }
    }
    if (run === null || typeof uPlot === "undefined") { return; }
    var kind = el.dataset.series;
    var columns = kind === "accuracy" ? [run.round, run.accuracy] : [run.round, run.epsilon, run.client_epsilon];
    var series = [{ label: "round" }].concat(SERIES[kind]);
    // A series with no value at all (no client-level DP in this run) is left out.
    for (var c = columns.length - 1; c > 1; c--) {
      if (columns[c].every(function (v) { return v === null; })) {
        columns.splice(c, 1);
        series.splice(c, 1);
      }
    }
    var width = Math.max(280, (el.clientWidth || 480) - 16);
    var opts = {
      title: kind === "accuracy" ? "accuracy per round" : "ε spent per round",
      width: width,
      height: 220,
      scales: { x: { time: false } },
      // Rounds are whole numbers: ticks every 1, 2, 5, 10 ... rounds, never 2.5.
      axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
      series: series,
    };
    el.textContent = "";
    new uPlot(opts, columns, el);
  }

  document.querySelectorAll(".chart").forEach(draw);

  var seconds = parseInt(document.body.dataset.refreshS || "10", 10);
  var toggle = document.getElementById("auto-refresh");
  var key = "edgeai-dashboard-refresh";
  try { toggle.checked = window.localStorage.getItem(key) !== "off"; } catch (e) { /* private mode */ }
  toggle.addEventListener("change", function () {
    try { window.localStorage.setItem(key, toggle.checked ? "on" : "off"); } catch (e) { /* ignore */ }
  });
  window.setInterval(function () {
    var typing = document.activeElement && document.activeElement.tagName === "INPUT" &&
      document.activeElement.type !== "checkbox";
    if (toggle.checked && !typing && document.visibilityState !== "hidden") {
      window.location.reload();
    }
  }, Math.max(1, seconds) * 1000);
})();

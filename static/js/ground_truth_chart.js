// The model page's "Gini by scoring date, matured" (Chart.js 4, static/vendor/chartjs): each
// matured run's Gini with its interval, against the expected Gini (meta.gini_oot). The data
// comes from the page itself (json_script "gini-data").
(function () {
  const source = document.getElementById("gini-data");
  const canvas = document.getElementById("gini-chart");
  if (!source || !canvas || typeof Chart === "undefined") return;
  const runs = JSON.parse(source.textContent);
  if (!runs.length) return;

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const colors = { ok: color("--ok"), warning: color("--warn"), alert: color("--bad"), brand: color("--brand"), muted: color("--muted") };
  const pointColors = runs.map((r) => colors[r.status] || colors.muted);
  const band = (key, label) => ({
    label, data: runs.map((r) => r[key]), borderColor: colors.muted, borderWidth: 1,
    borderDash: [2, 3], pointRadius: 0, fill: false,
  });
  const datasets = [
    {
      label: "Gini", data: runs.map((r) => r.gini), borderColor: colors.brand, backgroundColor: colors.brand,
      pointBackgroundColor: pointColors, pointBorderColor: pointColors, pointRadius: 4, borderWidth: 2, tension: 0.2,
    },
    band("low", "interval low"),
    band("high", "interval high"),
  ];
  if (runs.some((r) => r.expected !== null)) {
    datasets.push({
      label: "expected (gini_oot)", data: runs.map((r) => r.expected), borderColor: colors.ok,
      borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, fill: false,
    });
  }
  window.giniChart = new Chart(canvas, {
    type: "line",
    data: { labels: runs.map((r) => r.date), datasets },
    options: {
      animation: false, maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: { x: { ticks: { maxTicksLimit: 7, maxRotation: 0 } } },
      plugins: { legend: { labels: { boxWidth: 12, boxHeight: 2 } } },
    },
  });
})();

// The model page's "Challenger vs champion" (Chart.js 4, static/vendor/chartjs): per day both
// scored, the rank correlation and the top-decile overlap (1 is the same ranking) and the PSI
// between their scores (0 is the same distribution). Data: json_script "comparison-data".
(function () {
  const source = document.getElementById("comparison-data");
  const canvas = document.getElementById("comparison-chart");
  if (!source || !canvas || typeof Chart === "undefined") return;
  const days = JSON.parse(source.textContent);
  if (!days.length) return;

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const line = (key, label, colour, axis) => ({
    label, data: days.map((d) => d[key]), borderColor: colour, backgroundColor: colour,
    pointRadius: 3, borderWidth: 2, tension: 0.2, yAxisID: axis, spanGaps: true,
  });
  window.comparisonChart = new Chart(canvas, {
    type: "line",
    data: {
      labels: days.map((d) => d.date),
      datasets: [
        line("spearman", "Spearman", color("--brand"), "share"),
        line("top_decile_overlap", "top 10 % overlap", color("--ok"), "share"),
        line("psi", "PSI", color("--warn"), "psi"),
      ],
    },
    options: {
      animation: false, maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { ticks: { maxTicksLimit: 7, maxRotation: 0 } },
        share: { position: "left", min: 0, max: 1 },
        psi: { position: "right", min: 0, grid: { drawOnChartArea: false } },
      },
      plugins: { legend: { labels: { boxWidth: 12, boxHeight: 2 } } },
    },
  });
})();

// The model page's "Challenger vs champion" (Chart.js 4, static/vendor/chartjs): per day both
// scored, the rank correlation and the top-decile overlap (1 is the same ranking) and the PSI
// between their scores (0 is the same distribution). Data: json_script "comparison-data".
// The x axis counts days, not points: a week without a comparison is a week wide.
(function () {
  const source = document.getElementById("comparison-data");
  const canvas = document.getElementById("comparison-chart");
  if (!source || !canvas || typeof Chart === "undefined") return;
  const days = JSON.parse(source.textContent);
  if (!days.length) return;

  const DAY_MS = 86400000;
  const dayNumber = (iso) => Date.parse(`${iso}T00:00:00Z`) / DAY_MS;  // days since 1970-01-01
  const isoDate = (number) => new Date(number * DAY_MS).toISOString().slice(0, 10);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const title = (text) => ({ display: true, text });
  const line = (key, label, colour, axis) => ({
    label, data: days.map((d) => ({ x: dayNumber(d.date), y: d[key] })), borderColor: colour,
    backgroundColor: colour, pointRadius: 3, borderWidth: 2, tension: 0.2, yAxisID: axis, spanGaps: true,
  });
  window.comparisonChart = new Chart(canvas, {
    type: "line",
    data: {
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
        x: {
          type: "linear", min: dayNumber(days[0].date), max: dayNumber(days[days.length - 1].date),
          title: title("scoring date"),
          ticks: { precision: 0, maxTicksLimit: 7, maxRotation: 0, callback: isoDate },  // whole days
        },
        share: { position: "left", min: 0, max: 1, title: title("rank agreement (1 = same)") },
        psi: { position: "right", min: 0, grid: { drawOnChartArea: false }, title: title("PSI (0 = same)") },
      },
      plugins: {
        legend: { labels: { boxWidth: 12, boxHeight: 2 } },
        tooltip: { callbacks: { title: (items) => days[items[0].dataIndex].date } },
      },
    },
  });
})();

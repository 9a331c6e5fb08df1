// The model page's feature importance (Chart.js 4, static/vendor/chartjs): each feature's
// share of the model's importance, most first, as validation measured it. The data comes
// from the page itself (json_script "importance-data": [{name, share}], most first).
(function () {
  const source = document.getElementById("importance-data");
  const canvas = document.getElementById("importance-chart");
  if (!source || !canvas || typeof Chart === "undefined") return;
  const shares = JSON.parse(source.textContent).slice(0, 25);
  const css = getComputedStyle(document.documentElement);
  const brand = css.getPropertyValue("--brand").trim();
  Chart.defaults.animation = false;
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: shares.map((feature) => feature.name),
      datasets: [{ label: "share of importance", data: shares.map((feature) => feature.share * 100), backgroundColor: brand }],
    },
    options: {
      indexAxis: "y",
      maintainAspectRatio: false,
      scales: {
        x: { min: 0, ticks: { callback: (value) => `${value}%` } },
        y: { ticks: { autoSkip: false } },  // every feature named, not every other
      },
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: (item) => `${item.parsed.x.toFixed(1)}% of the model's importance` } },
      },
    },
  });
})();

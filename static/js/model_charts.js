// The model page's charts (Chart.js 4, static/vendor/chartjs): PSI and adversarial AUC per
// checked run with their warning and alert lines, and the latest run's score distribution
// against its baseline. The data comes from the page itself (json_script "chart-data").
(function () {
  const source = document.getElementById("chart-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  if (!data.runs.length) return;

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const colors = {
    ok: color("--ok"), warning: color("--warn"), alert: color("--bad"),
    brand: color("--brand"), muted: color("--muted"), line: color("--line"),
  };
  Chart.defaults.font.family = css.fontFamily;
  Chart.defaults.color = colors.muted;
  Chart.defaults.borderColor = colors.line;
  Chart.defaults.animation = false;  // the page reloads when a run ends: no need for motion

  const labels = data.runs.map((r) => r.date);
  const number = (x, digits) => (x === null || x === undefined ? "—" : x.toFixed(digits));

  function line(label, value, colour) {
    return {
      label, data: labels.map(() => value), borderColor: colour, backgroundColor: colour,
      borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, pointHoverRadius: 0, fill: false,
    };
  }

  // Each point is coloured by its own check's verdict (psi_status, auc_status), not the run's.
  function overTime(id, key, label, warn, alert, digits, y) {
    const canvas = document.getElementById(id);
    if (!canvas) return null;
    const statusOf = (run) => run[`${key}_status`] || "none";
    const pointColors = data.runs.map((r) => colors[statusOf(r)] || colors.muted);
    return new Chart(canvas, {
      type: "line",
      data: {
        labels,
        datasets: [
          {
            label, data: data.runs.map((r) => r[key]), borderColor: colors.brand,
            backgroundColor: colors.brand, pointBackgroundColor: pointColors,
            pointBorderColor: pointColors, pointRadius: data.runs.length > 60 ? 2 : 4,
            borderWidth: 2, tension: 0.2, spanGaps: true,
          },
          line(`warning ${warn}`, warn, colors.warning),
          line(`alert ${alert}`, alert, colors.alert),
        ],
      },
      options: {
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: { x: { ticks: { maxTicksLimit: 7, maxRotation: 0 } }, y },
        plugins: {
          legend: { labels: { boxWidth: 12, boxHeight: 2 } },
          tooltip: {
            filter: (item) => item.datasetIndex === 0,
            callbacks: {
              label: (item) => `${label} ${number(item.raw, digits)}`,
              afterLabel: (item) => `run ${data.runs[item.dataIndex].run} · ${statusOf(data.runs[item.dataIndex])}`,
            },
          },
        },
        // A click on a run's point shows its row in the run history (when it is among the shown).
        onClick: (event, elements) => {
          if (!elements.length) return;
          const row = document.getElementById(`run-${data.runs[elements[0].index].run}`);
          if (row) row.scrollIntoView({ behavior: "smooth", block: "center" });
        },
      },
    });
  }

  function distribution(id) {
    const canvas = document.getElementById(id);
    const histogram = data.histogram;
    if (!canvas || !histogram) return null;
    const edges = histogram.edges;
    const short = (x) => (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 0.01) ? x.toPrecision(2) : +x.toFixed(2));
    const bins = histogram.current.map((_, i) => `${short(edges[i])}–${short(edges[i + 1])}`);
    const percent = (shares) => shares.map((s) => 100 * s);
    const datasets = [{
      label: data.latest ? `run of ${data.latest.date}` : "latest run", data: percent(histogram.current),
      backgroundColor: colors.brand, borderRadius: 2, barPercentage: 0.9, categoryPercentage: 0.85,
    }];
    if (histogram.baseline) {
      datasets.push({
        label: "baseline", data: percent(histogram.baseline), backgroundColor: "rgba(102, 112, 133, 0.45)",
        borderRadius: 2, barPercentage: 0.9, categoryPercentage: 0.85,
      });
    }
    return new Chart(canvas, {
      type: "bar",
      data: { labels: bins, datasets },
      options: {
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { ticks: { maxTicksLimit: 6, maxRotation: 0 }, grid: { display: false } },
          y: { beginAtZero: true, ticks: { callback: (v) => `${v}%` } },
        },
        plugins: {
          legend: { labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${item.raw.toFixed(1)}% of scores` } },
        },
      },
    });
  }

  const t = data.thresholds;
  window.modelCharts = {
    psi: overTime("psi-chart", "psi", "PSI", t.psi_warn, t.psi_alert, 3,
      { beginAtZero: true, suggestedMax: t.psi_alert * 1.2 }),
    auc: overTime("auc-chart", "auc", "AUC", t.adversarial_warn, t.adversarial_alert, 3,
      { suggestedMin: 0.45, suggestedMax: t.adversarial_alert + 0.05 }),
    distribution: distribution("distribution-chart"),
  };
})();

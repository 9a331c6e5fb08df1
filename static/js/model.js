// The model page: preview the schedule, and reload when validation ends.
(function () {
  const settings = document.getElementById("settings-form");
  if (settings) wireSchedulePreview(settings);

  // While a run is queued or running, follow it and show the page anew when it ends.
  const runs = document.getElementById("runs");
  const active = () => document.querySelectorAll('[data-run-status].queued, [data-run-status].running');
  if (runs && active().length > 0) {
    adaptiveSetInterval(async () => {
      const response = await fetch(runs.dataset.apiUrl, { credentials: "same-origin" });
      if (!response.ok) return;
      const changed = (await response.json()).some((run) => {
        const badge = document.querySelector(`[data-run-status="${run.id}"]`);
        return badge && badge.textContent !== run.status;
      });
      if (changed) window.location.reload();
    }, 2000);
  }

  const latest = document.getElementById("latest-version");
  const pendingBadges = () => document.querySelectorAll("[data-version-state].pending");
  if (!latest || pendingBadges().length === 0) return;
  adaptiveSetInterval(async () => {
    if (pendingBadges().length === 0) return;
    const response = await fetch(latest.dataset.apiUrl, { credentials: "same-origin" });
    if (!response.ok) return;
    const deployment = await response.json();
    const done = deployment.versions.some((v) => v.validation.state !== "pending" &&
      document.querySelector(`[data-version-state="${v.number}"].pending`));
    if (done) window.location.reload();  // the page shows what validation read: render it anew
  }, 1500);
})();

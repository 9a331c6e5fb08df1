// Call fn now and again every `ms`, four times slower while the tab is hidden.
function adaptiveSetInterval(fn, ms) {
  let timer = null;
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(run, document.hidden ? ms * 4 : ms);
  }
  async function run() {
    try { await fn(); } finally { schedule(); }
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) run(); });
  schedule();
  return { now: run };
}

// Show the next fire times of the schedule fields of `form` as the user edits them.
function wireSchedulePreview(form) {
  const select = form.querySelector("#id_schedule");
  if (!select) return;
  const cron = form.querySelector("#id_cron");
  const zone = form.querySelector("#id_timezone");
  const cronField = form.querySelector("#cron-field");
  const preview = form.querySelector("#schedule-preview");
  async function refresh() {
    cronField.hidden = select.value !== "custom";
    const schedule = select.value === "custom" ? cron.value : select.value;
    if (!schedule.trim()) { preview.textContent = ""; return; }
    const params = new URLSearchParams({ schedule, timezone: zone.value || "UTC" });
    const response = await fetch(`${form.dataset.previewUrl}?${params}`, { credentials: "same-origin" });
    const data = await response.json();
    preview.classList.toggle("error", !response.ok);
    preview.textContent = response.ok
      ? `${data.schedule} — next runs: ${data.next_runs.map((t) => new Date(t).toLocaleString()).join(" · ")}`
      : data.error;
  }
  select.addEventListener("change", refresh);
  cron.addEventListener("input", refresh);
  zone.addEventListener("change", refresh);
  refresh();
}

// The status page: poll /status.json and update the figures in place (every 10 s, 40 s hidden).
(function () {
  const root = document.getElementById("status");
  if (!root) return;
  const staff = root.dataset.scope === "all";
  const params = new URLSearchParams(window.location.search);
  const filtered = Boolean(params.get("q") || params.get("status"));

  const pad = (n) => String(n).padStart(2, "0");
  const utc = (iso) => {
    const d = new Date(iso);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  };
  const ago = (seconds) => (seconds < 90 ? `${seconds} s ago` : seconds < 5400 ? `${Math.round(seconds / 60)} min ago` : `${Math.round(seconds / 3600)} h ago`);
  const fixed = (x, digits) => (x === null || x === undefined ? "—" : x.toFixed(digits));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value; else node.setAttribute(key, value);
    }
    children.forEach((child) => node.append(child));
    return node;
  }

  function light(model) {
    const title = `${model.status} · PSI ${fixed(model.psi, 3)} · adversarial AUC ${fixed(model.auc, 3)}`;
    return model.status
      ? el("span", { class: `light ${model.status}`, title, text: model.status })
      : el("span", { class: "light none", title: "No quality checks yet", text: "none" });
  }

  function setLight(node, ok, good, bad, text) {
    node.className = `light ${ok ? good : bad}`;
    node.textContent = text;
  }

  function services(report) {
    for (const [key, check] of Object.entries(report.services)) {
      const tile = root.querySelector(`[data-service="${key}"]`);
      if (!tile) continue;
      tile.classList.toggle("bad", !check.ok);
      setLight(tile.querySelector(".light"), check.ok, "ok", "alert", check.ok ? "up" : "down");
      tile.querySelector(".ms").textContent = `${check.ms} ms`;
      tile.querySelector(".detail").textContent = check.detail;
    }
    const tick = report.last_tick;
    const tile = root.querySelector("[data-tick]");
    tile.classList.toggle("warn", !tick.ok);
    setLight(tile.querySelector(".light"), tick.ok, "ok", "warning", tick.at ? ago(tick.age_seconds) : "never");
    tile.querySelector(".detail").textContent = tick.at ? `${utc(tick.at)} UTC · ${tick.detail}` : tick.detail;
  }

  function counts(report) {
    for (const [key, value] of Object.entries(report.runs)) {
      const figure = root.querySelector(`[data-count="${key}"]`);
      if (figure) figure.textContent = value;
    }
    root.querySelector('[data-tile="failed_24h"]').classList.toggle("bad", report.runs.failed_24h > 0);
  }

  function table(id, rows, empty) {
    const body = document.querySelector(`#${id} tbody`);
    const columns = document.querySelectorAll(`#${id} thead th`).length;
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "empty", text: empty }))]));
  }

  function failures(report) {
    table("failures", report.failures.map((f) => el("tr", { "data-run": f.run },
      el("td", {}, el("a", { class: "name", href: f.url.split("#")[0], text: f.model })),
      ...(staff ? [el("td", { text: f.owner })] : []),
      el("td", { text: f.date }),
      el("td", { text: `${utc(f.finished_at)} UTC` }, el("div", { class: "detail" },
        el("span", { class: `badge ${f.status}`, text: f.status }), ` attempt ${f.attempts} of ${f.max_attempts}`)),
      el("td", { class: "detail", text: f.error }),
      el("td", {}, el("a", { href: f.url, text: `Run ${f.run}` })),
    )), "No failures in the last 24 hours.");
  }

  function quality(report) {
    let all = 0;
    for (const [status, count] of Object.entries(report.quality.counts)) {
      all += count;
      const node = root.querySelector(`#quality [data-status="${status}"] .count`);
      if (node) node.textContent = count.toLocaleString("en-US");
    }
    const total = root.querySelector('#quality [data-status="all"] .count');
    if (total) total.textContent = all.toLocaleString("en-US");
    table("quality", report.quality.models.map((m) => el("tr", { "data-model": m.id },
      el("td", {}, el("a", { class: "name", href: m.url, text: m.name })),
      ...(staff ? [el("td", { text: m.owner })] : []),
      el("td", {}, light(m)),
      el("td", { class: "num mono", text: fixed(m.psi, 3) }),
      el("td", { class: "num mono", text: fixed(m.auc, 3) }),
      el("td", { text: m.date || "—" }),
    )), filtered ? "No models match this search and filter." : "No models yet.");
  }

  // The same pages of the same lists as the page shows: its own query string.
  adaptiveSetInterval(async () => {
    const response = await fetch(root.dataset.url + window.location.search, { credentials: "same-origin" });
    if (!response.ok) return;
    const report = await response.json();
    services(report);
    counts(report);
    failures(report);
    quality(report);
    const at = new Date(report.checked_at);
    document.getElementById("checked-at").textContent = `${pad(at.getUTCHours())}:${pad(at.getUTCMinutes())}:${pad(at.getUTCSeconds())} UTC`;
  }, 10000);
})();

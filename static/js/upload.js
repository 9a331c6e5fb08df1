// The drop zone: drag-and-drop or click-to-choose, upload with progress, then live status.
(function () {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  const progress = document.getElementById("progress");
  const bar = document.getElementById("progress-bar");
  const progressFile = document.getElementById("progress-file");
  const progressText = document.getElementById("progress-text");
  const result = document.getElementById("upload-result");
  const rows = document.getElementById("model-rows");
  const quota = document.getElementById("quota-text");
  const filters = document.querySelector("#models .list-filters");

  function show(kind, text) {
    result.className = `upload-result shown ${kind}`;
    result.textContent = text;
  }

  // A team's model reports to the team (its address, or its members) unless given an
  // address: choosing a team clears the user's own, which the field starts with.
  const team = document.getElementById("id_team");
  const email = document.getElementById("id_email");
  if (team && email) {
    const own = email.value;
    team.addEventListener("change", () => {
      if (team.value && email.value === own) email.value = "";
      else if (!team.value && !email.value) email.value = own;
    });
  }

  function megabytes(bytes) { return (bytes / 1048576).toFixed(1) + " MB"; }

  // The rows of this page only: the page's own query string (filter, search, sort, page).
  async function refreshList() {
    if (!rows) return false;
    const response = await fetch(form.dataset.statusUrl + window.location.search, { credentials: "same-origin" });
    if (!response.ok) return false;
    const data = await response.json();
    rows.innerHTML = data.rows;
    for (const [status, count] of Object.entries(data.counts)) {
      const node = filters && filters.querySelector(`[data-status="${status}"] .count`);
      if (node) node.textContent = count.toLocaleString("en-US");
    }
    rows.dataset.pending = data.pending;
    if (quota) quota.textContent = data.quota;
    if (!data.pending) progress.classList.remove("shown");  // validation is over: the row says how it went
    return data.pending;
  }

  function upload(file) {
    const data = new FormData(form);
    data.set("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    progress.classList.add("shown");
    progressFile.textContent = file.name;
    bar.style.width = "0%";
    result.className = "upload-result";
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.round((100 * event.loaded) / event.total);
      bar.style.width = percent + "%";
      progressText.textContent = `${percent}% · ${megabytes(event.loaded)} of ${megabytes(event.total)}`;
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = { error: `the server answered ${xhr.status}` }; }
      if (xhr.status === 201) {
        bar.style.width = "100%";
        progressText.textContent = "uploaded · validating in a sandbox…";
        show("ok", `${body.name} v${body.version} uploaded. Validation runs in a sandbox; the result appears below.`);
        if (rows) { pending = true; poller.now(); } else { setTimeout(() => window.location.reload(), 800); }
      } else {
        progress.classList.remove("shown");
        show("error", body.error || body.detail || `Upload failed (${xhr.status}).`);
      }
    });
    xhr.addEventListener("error", () => {
      progress.classList.remove("shown");
      show("error", "The upload was interrupted: check your connection and try again.");
    });
    xhr.send(data);
  }

  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragenter", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") input.click(); });
  input.addEventListener("change", () => { if (input.files[0]) upload(input.files[0]); input.value = ""; });
  // Dropping a file anywhere else on the page must not navigate away from it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  // Poll every 1.5 s while a validation is pending, every 15 s otherwise.
  let pending = rows && rows.dataset.pending === "true";
  let ticks = 0;
  const poller = adaptiveSetInterval(async () => {
    ticks += 1;
    if (rows && (pending || ticks % 10 === 0)) pending = await refreshList();
  }, 1500);
  wireSchedulePreview(form);
  if (filters) filters.querySelector("select[name=sort]").addEventListener("change", () => filters.requestSubmit());
})();

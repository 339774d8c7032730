// The lipcert dashboard: a thin client of the /v1 JSON API. The token stays in sessionStorage (this tab only).
"use strict";

(function () {
  const TOKEN_KEY = "lipcert-token";
  const POLL_MS = 1000;
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const $ = (id) => document.getElementById(id);
  let currentJob = null;
  let pollTimer = null;
  let objectUrls = [];

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // A problem+json answer becomes "code: detail"; anything else its status line.
  async function problemText(response) {
    try {
      const body = await response.json();
      if (body && (body.detail || body.code)) {
        const fields = body.errors ? " " + JSON.stringify(body.errors) : "";
        return `${body.code || response.status}: ${body.detail || body.title}${fields}`;
      }
    } catch (e) {
      // not JSON
    }
    return `${response.status} ${response.statusText}`;
  }

  async function api(method, path, { body, contentType, accept } = {}) {
    const headers = { Authorization: `Bearer ${token()}` };
    if (contentType) headers["Content-Type"] = contentType;
    if (accept) headers.Accept = accept;
    const response = await fetch(path, { method, headers, body, cache: "no-store" });
    if (!response.ok) throw new Error(`${method} ${path}: ${await problemText(response)}`);
    return response;
  }

  async function upload(kind, file) {
    const path = `/v1/${kind}?name=${encodeURIComponent(file.name)}`;
    const response = await api("POST", path, { body: file, contentType: "application/octet-stream" });
    return (await response.json()).id;
  }

  function jobConfig(form, model, dataset) {
    const norms = Array.from(form.querySelectorAll("input[name=norm]:checked")).map((el) => el.value);
    const epsilons = $("epsilons").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    if (!norms.length) throw new Error("choose at least one norm");
    if (!epsilons.length || epsilons.some((e) => !(e > 0))) throw new Error("eps must be positive numbers");
    const config = { model, norms, epsilons, attacks: $("attacks").value, samples: Number($("samples").value) };
    if (dataset) config.dataset = dataset;
    return config;
  }

  function renderJob(job) {
    $("progress-section").hidden = false;
    $("job-id").textContent = job.id;
    const state = $("job-state");
    state.textContent = job.state;
    state.className = `state-${job.state}`;
    $("job-stage").textContent = job.stage ? `stage ${job.stage}` : "";
    $("job-progress").value = job.progress || 0;
    const eta = job.eta_s != null && !TERMINAL.includes(job.state) ? ` (about ${Math.round(job.eta_s)} s left)` : "";
    const error = job.error ? ` ${job.error.code}: ${job.error.message}` : "";
    $("job-message").textContent = (job.message || "") + eta + error;
    const warnings = job.warnings || [];
    $("job-warnings").textContent = warnings.map((w) => `Warning: ${w}`).join(" ");
    $("job-warnings").hidden = !warnings.length;
    const list = $("job-stages");
    list.replaceChildren(...(job.stages || []).map((s) => {
      const li = document.createElement("li");
      const secs = s.seconds != null ? ` ${s.seconds.toFixed(2)} s` : "";
      li.textContent = `${s.stage}: ${s.status}${secs}${s.reason ? " - " + s.reason : ""}`;
      return li;
    }));
    $("cancel").disabled = TERMINAL.includes(job.state);
  }

  async function poll(jobId) {
    clearTimeout(pollTimer);
    try {
      const job = await (await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`)).json();
      if (jobId !== currentJob) return;
      renderJob(job);
      if (job.state === "succeeded") {
        await showReport(job);
        refreshJobs();
        return;
      }
      if (TERMINAL.includes(job.state)) {
        refreshJobs();
        return;
      }
    } catch (e) {
      showError(e.message);
    }
    pollTimer = setTimeout(() => poll(jobId), POLL_MS);
  }

  function blobUrl(text, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    objectUrls.push(url);
    return url;
  }

  async function showReport(job) {
    const envelope = await (await api("GET", job.links.report)).text();
    const name = `${job.id}.report.json`;
    const page = await (await api("POST", `/v1/render?name=${encodeURIComponent(name)}`, {
      body: envelope, contentType: "application/json", accept: "text/html",
    })).text();
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
    $("report-frame").srcdoc = page;
    $("report-open").href = blobUrl(page, "text/html");
    const html = $("report-download-html");
    html.href = blobUrl(page, "text/html");
    html.download = `${job.id}.report.html`;
    const json = $("report-download-json");
    json.href = blobUrl(envelope, "application/json");
    json.download = name;
    $("report-section").hidden = false;
  }

  async function start(event) {
    event.preventDefault();
    showError("");
    const form = event.target;
    const button = $("start");
    button.disabled = true;
    try {
      if (!token()) throw new Error("enter an API token first");
      const modelFile = $("model-file").files[0];
      const datasetFile = $("dataset-file").files[0];
      $("job-message").textContent = "uploading ...";
      const model = await upload("models", modelFile);
      const dataset = datasetFile ? await upload("datasets", datasetFile) : null;
      const response = await api("POST", "/v1/jobs", {
        body: JSON.stringify(jobConfig(form, model, dataset)), contentType: "application/json",
      });
      const job = await response.json();
      currentJob = job.id;
      $("report-section").hidden = true;
      renderJob(job);
      poll(job.id);
    } catch (e) {
      showError(e.message);
    } finally {
      button.disabled = false;
    }
  }

  async function cancel() {
    if (!currentJob) return;
    try {
      renderJob(await (await api("DELETE", `/v1/jobs/${encodeURIComponent(currentJob)}`)).json());
    } catch (e) {
      showError(e.message);
    }
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    return td;
  }

  async function refreshJobs() {
    if (!token()) return;
    try {
      const page = await (await api("GET", "/v1/jobs?limit=10")).json();
      $("jobs").replaceChildren(...page.items.map((job) => {
        const tr = document.createElement("tr");
        const model = cell(job.model_name ? `${job.model_name} (${job.model.slice(7, 19)})` : job.model);
        model.title = job.model;
        tr.append(cell(job.id), cell(job.state), cell(job.created_at), model);
        const open = document.createElement("td");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = job.state === "succeeded" ? "Open report" : "Follow";
        button.addEventListener("click", () => {
          currentJob = job.id;
          $("report-section").hidden = true;
          poll(job.id);
        });
        open.append(button);
        tr.append(open);
        return tr;
      }));
    } catch (e) {
      showError(e.message);
    }
  }

  function showTokenState() {
    $("token-status").textContent = token()
      ? "A token is set for this tab (kept in sessionStorage, sent only to this server)."
      : "No token yet. The token is kept in this tab only (sessionStorage).";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      showTokenState();
      refreshJobs();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
      $("jobs").replaceChildren();
    });
    $("job-form").addEventListener("submit", start);
    $("cancel").addEventListener("click", cancel);
    $("jobs-refresh").addEventListener("click", refreshJobs);
    showTokenState();
    refreshJobs();
  });
})();

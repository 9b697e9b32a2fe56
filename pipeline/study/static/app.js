// The annotation page: log in, show the next unvoted pair of the sequence, send one vote per key.
// Data from the server only ever goes into textContent or a media src (never innerHTML), and the
// page keeps no state but the annotator id: the server decides what comes next, so a reload resumes.
"use strict";

(() => {
  const STORE = "vipo-annotator";
  const KEYS = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie", ArrowUp: "skip" };
  const $ = (id) => document.getElementById(id);
  let annotator = null;
  let item = null;
  let shownAt = 0;
  let busy = false;

  function setState(state) {
    document.body.dataset.state = state; // "ready" | "busy" | "done" | "login": lets tests wait on it
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  async function api(method, path, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new Error("the server cannot be reached; your last vote may not be saved, reload to resume");
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      const err = new Error((data && data.error) || `the server answered ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  function showLogin(message) {
    annotator = null;
    item = null;
    $("study").hidden = true;
    $("login").hidden = false;
    showError(message || "");
    setState("login");
    $("annotator").focus();
  }

  async function login(id) {
    setState("busy");
    try {
      const data = await api("POST", "/api/login", { annotator: id });
      annotator = data.annotator;
      localStorage.setItem(STORE, annotator);
    } catch (e) {
      localStorage.removeItem(STORE);
      showLogin(e.message);
      return;
    }
    $("login").hidden = true;
    $("study").hidden = false;
    $("who").textContent = annotator;
    showError("");
    try {
      await next();
    } catch (e) {
      showError(e.message);
    }
  }

  async function next() {
    const data = await api("GET", `/api/next?annotator=${encodeURIComponent(annotator)}`);
    $("progress").textContent = `${data.done} / ${data.total}`;
    item = data.item;
    if (item === null) {
      $("task").hidden = true;
      $("finished").hidden = false;
      setState("done");
      return;
    }
    render(item);
    setState("ready");
  }

  function media(side, modality) {
    let el;
    if (modality === "video") {
      el = document.createElement("video");
      el.controls = true;
      el.loop = true;
      el.muted = true;
      el.autoplay = true;
      el.playsInline = true;
    } else {
      el = document.createElement("img");
      el.alt = "";
    }
    el.src = side.url;
    return el;
  }

  function render(it) {
    $("finished").hidden = true;
    $("task").hidden = false;
    $("task").dataset.seq = String(it.seq);
    $("task").dataset.pairId = it.pair_id;
    $("category").textContent = it.category.replace(/_/g, " ");
    $("rubric").textContent = it.rubric;
    $("prompt").textContent = it.prompt;
    $("left").replaceChildren(media(it.left, it.modality));
    $("right").replaceChildren(media(it.right, it.modality));
    shownAt = performance.now();
  }

  async function vote(choice) {
    if (busy || item === null) return; // one vote in flight at a time: a held key cannot skip pairs
    busy = true;
    setState("busy");
    setButtons(false);
    try {
      const ms = Math.max(0, Math.round(performance.now() - shownAt));
      await api("POST", "/api/vote", { annotator, seq: item.seq, pair_id: item.pair_id, choice, ms });
      showError("");
      await next();
    } catch (e) {
      showError(e.message);
      if (e.status === 409) await next().catch((e2) => showError(e2.message)); // out of step: resync
      else setState("ready");
    } finally {
      busy = false;
      setButtons(true);
    }
  }

  function setButtons(enabled) {
    for (const b of document.querySelectorAll("#buttons button")) b.disabled = !enabled;
  }

  document.addEventListener("keydown", (e) => {
    const choice = KEYS[e.key];
    if (choice === undefined || annotator === null || e.target instanceof HTMLInputElement) return;
    e.preventDefault();
    if (!e.repeat) vote(choice);
  });

  for (const b of document.querySelectorAll("#buttons button")) {
    b.addEventListener("click", () => vote(b.dataset.choice));
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    login($("annotator").value.trim());
  });

  $("logout").addEventListener("click", () => {
    localStorage.removeItem(STORE);
    showLogin("");
  });

  const stored = localStorage.getItem(STORE);
  if (stored) login(stored);
  else showLogin("");
})();

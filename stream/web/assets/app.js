// avstream's browser view: one tile per stream of the run, fed by the WebSocket /ws
// (docs/web.md; the messages are those of docs/protocol.md, relayed by stream/web/server.py).
// Plain ES2020, no build step, nothing from another origin; the server's Content-Security-Policy
// forbids inline script and style, so styles are set through the CSSOM (element.style.x) only.
//
// Hooks the browser tests rely on (keep them exact; tests/test_web_browser.py):
//   #banner           hidden while the WebSocket is open and the run's link is up; else the text
//                     (the server's link detail, or "web view not reachable: retrying")
//   #grid             .tile[data-stream=ID] per stream, attribute data-seq = the prediction shown,
//                     class .large when enlarged (click, Enter or Space; /stream/<id> opens so)
//   .name             the stream id
//   .video            a canvas showing the newest frame (its width and height the frame's);
//                     data-frames = frames drawn so far; .novideo says why when the view has none
//   .labels .label    top-k rows: .label-name text, .bar (style width = probability, data-p)
//   .events .event[data-id=ID]   events of the last 2 minutes, class .active until their end;
//                     .event-name text
//   canvas.spark, .latency       latency of the last 60 predictions and the numbers
//   .status [data-field=fps_in|windows_run|windows_skipped|restarts|degraded|state]
//   .meter            audio level, attribute data-dbfs; hidden when the stream has no sound
//   .weights-note     shown for random_weights predictions ("untrained weights: ...")
// Not hooks, free to change: .reason (the run's word on a failed or degraded stream),
// .frame-age ("no new frame for N s"), .badge, .pred-time, the layout classes.
"use strict";

(() => {
  const WINDOW_MS = 120000; // the events timeline
  const SPARK_N = 60; // predictions in the latency sparkline
  const TOP_LABELS = 5; // a run's --topk may send more
  const BACKOFF_FIRST_MS = 250;
  const BACKOFF_MAX_MS = 5000;
  const LEVEL_STALE_MS = 3000; // the meter hides when no level came for this long
  const FRAME_STALE_MS = 3000; // a tile on screen says so when no frame came for this long
  const GONE_STATES = new Set(["ended", "failed", "removed"]);
  const RUN_GONE_MS = 5000; // a run (behind a proxy) whose status stopped this long ago
  const STREAM_PATH = /^\/stream\/([A-Za-z0-9_-]{1,64})\/?$/;

  const grid = document.getElementById("grid");
  const banner = document.getElementById("banner");
  const runLine = document.getElementById("run");
  const sourceLine = document.getElementById("source");
  const clock = document.getElementById("clock");
  const empty = document.getElementById("empty");
  const tileTemplate = document.getElementById("tile-template");
  const labelTemplate = document.getElementById("label-template");
  const eventTemplate = document.getElementById("event-template");
  const textDecoder = new TextDecoder();

  const pathMatch = STREAM_PATH.exec(location.pathname);
  const page = {
    ws: null,
    open: false, // the WebSocket is open
    tried: false, // a connection was tried and lost or refused: the banner may speak
    backoff: BACKOFF_FIRST_MS,
    retryTimer: 0,
    frames: false,
    fps: 0,
    link: { state: "up", detail: "" },
    runs: new Map(), // "host pid" -> {body: its latest run status, at: performance.now()}
    tiles: new Map(), // stream id -> Tile, in the grid's order
    large: pathMatch ? pathMatch[1] : null,
    visible: new Set(),
    lastWatch: "",
    watchTimer: 0,
    offsetMs: 0, // the run's wall clock minus ours (a run on another host)
  };

  // ---- formatting ----

  const dash = "–";
  const num = (v) => typeof v === "number" && Number.isFinite(v);
  const fmtMs = (v) => (!num(v) ? dash : v < 100 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`);
  const fmtPct = (p) => {
    if (!num(p)) return dash;
    const v = p * 100;
    return v < 10 ? `${v.toFixed(1)}%` : `${Math.round(v)}%`;
  };
  const fmtInt = (v) => (num(v) ? Math.round(v).toLocaleString() : dash);
  const fmtTime = (ms) =>
    new Date(ms).toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hourCycle: "h23",
    });
  const fmtDuration = (ms) => {
    const s = Math.max(0, ms / 1000);
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${String(Math.round(s - m * 60)).padStart(2, "0")} s`;
  };
  // The run's clock now (ms since 1970): ours corrected by the offset seen in its live
  // heartbeats (never in the hello's bodies, which may be old), for the events' timeline.
  const runNow = () => Date.now() + page.offsetMs;
  const noteClock = (wallNs) => {
    if (num(wallNs)) page.offsetMs = wallNs / 1e6 - Date.now();
  };

  // ---- a tile ----

  class Tile {
    constructor(id) {
      this.id = id;
      const el = tileTemplate.content.firstElementChild.cloneNode(true);
      this.el = el;
      el.dataset.stream = id;
      el.setAttribute("aria-label", `stream ${id}`);
      const q = (sel) => el.querySelector(sel);
      q(".name").textContent = id;
      this.badge = q(".badge");
      this.predTime = q(".pred-time");
      this.weightsNote = q(".weights-note");
      this.reason = q(".reason");
      this.video = q(".video");
      this.video.setAttribute("aria-label", `video of ${id}`);
      this.videoCtx = this.video.getContext("2d", { alpha: false });
      this.novideo = q(".novideo");
      this.waiting = q(".waiting");
      this.frameAge = q(".frame-age");
      this.meter = q(".meter");
      this.meterFill = q(".meter-fill");
      this.meterPeak = q(".meter-peak");
      this.meterText = q(".meter-text");
      this.labels = q(".labels");
      this.labelsEmpty = q(".labels-empty");
      this.eventsList = q(".events-list");
      this.eventsEmpty = q(".events-empty");
      this.eventsAxis = q(".events-axis");
      this.spark = q("canvas.spark");
      this.latEngine = q(".lat-engine");
      this.latC2p = q(".lat-c2p");
      this.fields = {};
      for (const dd of el.querySelectorAll(".status [data-field]")) {
        this.fields[dd.dataset.field] = dd;
      }

      this.status = null; // the latest status body
      this.runEntry = null; // this stream's entry in the latest run status
      this.predDegraded = [];
      this.lat = []; // [engine ms, capture->publish ms] of the last SPARK_N predictions
      this.sparkQueued = false;
      this.events = new Map(); // id -> {id, name, start, end, active, peak, row, ...}
      this.decoding = false; // a frame is being decoded
      this.pending = null; // the newest frame that arrived meanwhile (older ones are dropped)
      this.shown = 0;
      this.badFrames = 0; // JPEGs that did not decode (skipped: the next frame comes soon)
      this.gone = false;
      this.lastFrame = 0; // performance.now() when the last frame was shown
      this.lastLevel = 0;
      this.lastStatus = 0;

      el.addEventListener("click", () => toggleLarge(this.id));
      el.addEventListener("keydown", (e) => {
        if (e.target !== el) return;
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          toggleLarge(this.id);
        }
      });
      this.setFrames(page.frames);
    }

    setFrames(frames) {
      this.novideo.hidden = frames;
      this.novideo.textContent = frames
        ? ""
        : "no video here: this view relays a run on another host; " +
          "its video is served by that run's own --web";
      this.waiting.hidden = !frames || this.shown > 0;
      if (!frames) this.video.hidden = true;
    }

    // A JPEG arrived: decode it (createImageBitmap, off the main thread) and draw it on the
    // canvas, unless one is still being decoded; then only the newest waits. Measured with one
    // headless Chromium page at 10 fps, 640 pixels: 15 % of a core, against 26 % when each
    // frame was given to an <img> as a new blob: URL.
    frame(blob) {
      if (this.decoding) {
        this.pending = blob;
        return;
      }
      this.decoding = true;
      createImageBitmap(blob)
        .then(
          (bitmap) => this.draw(bitmap),
          () => {
            this.badFrames += 1;
          },
        )
        .finally(() => {
          this.decoding = false;
          const next = this.pending;
          this.pending = null;
          if (next && !this.gone) this.frame(next);
        });
    }

    draw(bitmap) {
      if (this.gone) {
        bitmap.close();
        return;
      }
      const v = this.video;
      // Setting a canvas's size clears it, even to the same value: only when it changes.
      if (v.width !== bitmap.width) v.width = bitmap.width;
      if (v.height !== bitmap.height) v.height = bitmap.height;
      this.videoCtx.drawImage(bitmap, 0, 0);
      bitmap.close();
      this.shown += 1;
      this.lastFrame = performance.now();
      v.dataset.frames = String(this.shown);
      v.hidden = false;
      this.waiting.hidden = true;
    }

    prediction(b) {
      this.el.dataset.seq = String(b.seq);
      const labels = Array.isArray(b.labels) ? b.labels.slice(0, TOP_LABELS) : [];
      // Rows are kept and refilled: the bars' widths change in place (no transition:
      // style.css says why).
      while (this.labels.children.length > labels.length) this.labels.lastElementChild.remove();
      while (this.labels.children.length < labels.length) {
        this.labels.append(labelTemplate.content.firstElementChild.cloneNode(true));
      }
      labels.forEach((l, i) => {
        const row = this.labels.children[i];
        const p = num(l.score) ? Math.min(1, Math.max(0, l.score)) : 0;
        row.querySelector(".label-name").textContent = l.label;
        row.title = `${l.label} (class ${l.index}): ${fmtPct(p)}`;
        row.querySelector(".label-p").textContent = fmtPct(p);
        const bar = row.querySelector(".bar");
        bar.dataset.p = String(p);
        bar.style.width = `${(p * 100).toFixed(1)}%`;
      });
      this.labelsEmpty.hidden = labels.length > 0;
      this.weightsNote.hidden = b.random_weights !== true;
      if (b.t && num(b.t.wall_ns)) {
        this.predTime.textContent = fmtTime(b.t.wall_ns / 1e6);
        this.predTime.dateTime = new Date(b.t.wall_ns / 1e6).toISOString();
      }
      this.predDegraded = Array.isArray(b.degraded) ? b.degraded : [];
      const lat = b.latency_ms || {};
      this.lat.push([lat.engine, lat.capture_to_publish]);
      if (this.lat.length > SPARK_N) this.lat.splice(0, this.lat.length - SPARK_N);
      this.showLatency();
      this.showDegraded();
      this.el.title =
        `${this.id}: ${b.model} on ${b.engine}, smoothing ${b.smoothing}, ` +
        `a window every ${b.stride_s} s (click or Enter: enlarge)`;
    }

    showLatency() {
      const last = this.lat[this.lat.length - 1] || [];
      const max = (k) => Math.max(...this.lat.map((x) => (num(x[k]) ? x[k] : 0)));
      this.latEngine.textContent = fmtMs(last[0]);
      this.latC2p.textContent = fmtMs(last[1]);
      this.spark.title =
        `the last ${this.lat.length} predictions: engine up to ${fmtMs(max(0))}, ` +
        `capture→publish up to ${fmtMs(max(1))}`;
      if (!this.sparkQueued) {
        this.sparkQueued = true;
        requestAnimationFrame(() => {
          this.sparkQueued = false;
          this.drawSpark();
        });
      }
    }

    drawSpark() {
      const c = this.spark;
      const dpr = window.devicePixelRatio || 1;
      const w = Math.max(1, Math.round(c.clientWidth * dpr));
      const h = Math.max(1, Math.round(c.clientHeight * dpr));
      if (c.width !== w) c.width = w;
      if (c.height !== h) c.height = h;
      const g = c.getContext("2d");
      g.clearRect(0, 0, w, h);
      if (this.lat.length === 0 || c.clientWidth === 0) return;
      let top = 1;
      for (const [e, p] of this.lat) top = Math.max(top, num(e) ? e : 0, num(p) ? p : 0);
      top *= 1.1;
      const pad = 2 * dpr;
      const x = (i) => pad + ((w - 2 * pad) * i) / (SPARK_N - 1);
      const y = (v) => h - pad - ((h - 2 * pad) * v) / top;
      const off = SPARK_N - this.lat.length; // newest at the right edge
      const style = getComputedStyle(c);
      const series = [
        [1, style.getPropertyValue("--c2p").trim() || "#e8b04a"],
        [0, style.getPropertyValue("--engine").trim() || "#6cb6ff"],
      ];
      g.lineWidth = 1.5 * dpr;
      g.lineJoin = "round";
      for (const [k, color] of series) {
        g.strokeStyle = color;
        g.beginPath();
        let started = false;
        this.lat.forEach((row, i) => {
          if (!num(row[k])) return;
          if (started) g.lineTo(x(off + i), y(row[k]));
          else g.moveTo(x(off + i), y(row[k]));
          started = true;
        });
        g.stroke();
      }
      g.fillStyle = style.getPropertyValue("--muted").trim() || "#8a93a6";
      g.font = `${10 * dpr}px system-ui, sans-serif`;
      g.textBaseline = "top";
      g.fillText(fmtMs(top / 1.1), pad, pad);
    }

    statusBody(b) {
      this.status = b;
      this.lastStatus = performance.now();
      this.setState(b.state);
      this.fields.fps_in.textContent = num(b.fps_in) ? b.fps_in.toFixed(1) : dash;
      const w = b.windows || {};
      this.fields.windows_run.textContent = fmtInt(w.run);
      this.fields.windows_skipped.textContent = fmtInt(w.skipped);
      const src = b.sources || {};
      let restarts = 0;
      for (const s of [src.video, src.audio]) {
        if (s && num(s.restarts)) restarts += s.restarts;
      }
      this.fields.restarts.textContent = fmtInt(restarts);
      this.showDegraded();
      this.syncActive(b);
    }

    // The status lists the active events: one whose start was missed (a page opened while
    // it lasts) appears; one the status listed and whose end was lost ends when two
    // heartbeats in a row leave it out (one never listed is left alone: a publisher may not
    // fill the list).
    syncActive(b) {
      if (GONE_STATES.has(b.state)) {
        for (const ev of this.events.values()) {
          if (ev.active) this.endEvent(ev, b.t.wall_ns / 1e6, `stream ${b.state}`);
        }
        return;
      }
      if (!Array.isArray(b.events)) return;
      const listed = new Set();
      for (const a of b.events) {
        listed.add(a.id);
        let ev = this.events.get(a.id);
        if (!ev) {
          const start = b.t.wall_ns / 1e6 - (b.t.mono_ns - a.start_ns) / 1e6;
          ev = this.newEvent(a.id, a.name, start);
        }
        if (ev.active) {
          ev.listed = true;
          ev.missed = 0;
          if (num(a.peak)) ev.peak = Math.max(ev.peak || 0, a.peak);
          this.renderEvent(ev);
        }
      }
      for (const ev of this.events.values()) {
        if (ev.active && ev.listed && !listed.has(ev.id) && ++ev.missed >= 2) {
          this.endEvent(ev, b.t.wall_ns / 1e6, "its end was not received");
        }
      }
    }

    newEvent(id, name, start) {
      const row = eventTemplate.content.firstElementChild.cloneNode(true);
      row.dataset.id = id;
      row.querySelector(".event-name").textContent = name;
      const ev = {
        id,
        name,
        start,
        end: null,
        active: true,
        listed: false, // a status listed it
        missed: 0,
        peak: 0,
        row,
        when: row.querySelector(".event-when"),
        span: row.querySelector(".event-span"),
      };
      this.events.set(id, ev);
      // newest first
      let before = null;
      for (const other of this.eventsList.children) {
        const o = this.events.get(other.dataset.id);
        if (o && o.start <= start) {
          before = other;
          break;
        }
      }
      this.eventsList.insertBefore(row, before);
      this.showEventsEmpty();
      return ev;
    }

    showEventsEmpty() {
      this.eventsEmpty.hidden = this.events.size > 0;
      this.eventsAxis.hidden = this.events.size === 0;
    }

    endEvent(ev, end, reason) {
      ev.active = false;
      ev.end = end;
      ev.reason = reason;
      this.renderEvent(ev);
    }

    event(b) {
      let ev = this.events.get(b.id);
      const start = b.start_wall_ns / 1e6;
      if (!ev) {
        if (b.type === "end" && b.end_wall_ns / 1e6 < runNow() - WINDOW_MS) return;
        ev = this.newEvent(b.id, b.name, start);
      }
      ev.start = start;
      ev.labels = b.labels;
      if (num(b.peak)) ev.peak = b.peak;
      ev.mean = b.mean;
      ev.degraded = b.degraded;
      if (b.type === "end") this.endEvent(ev, b.end_wall_ns / 1e6, b.reason);
      else if (ev.active) this.renderEvent(ev);
    }

    renderEvent(ev, now = runNow()) {
      const end = ev.active ? now : ev.end;
      const row = ev.row;
      row.classList.toggle("active", ev.active);
      row.classList.toggle("degraded", ev.degraded === true);
      ev.when.textContent = `${fmtTime(ev.start)} · ${fmtDuration(end - ev.start)}`;
      const lines = [`${ev.name} (${ev.id})`];
      if (num(ev.peak) && ev.peak > 0) lines.push(`peak ${fmtPct(ev.peak)}`);
      if (ev.labels) lines.push(`labels: ${ev.labels.join(", ")}`);
      const until = ev.active ? "still active" : `to ${fmtTime(end)}`;
      lines.push(`from ${fmtTime(ev.start)}, ${until}`);
      if (ev.reason) lines.push(`ended: ${ev.reason}`);
      row.title = lines.join("\n");
      const from = now - WINDOW_MS;
      const a = Math.max(ev.start, from);
      const left = ((a - from) / WINDOW_MS) * 100;
      const width = ((Math.max(a, end) - a) / WINDOW_MS) * 100;
      ev.span.style.left = `${Math.min(100, Math.max(0, left)).toFixed(2)}%`;
      ev.span.style.width = `${Math.min(100, Math.max(0, width)).toFixed(2)}%`;
    }

    // Once a second: the timeline moves on; ended events older than the window go.
    tick(now) {
      for (const ev of [...this.events.values()]) {
        if (!ev.active && ev.end < now - WINDOW_MS) {
          ev.row.remove();
          this.events.delete(ev.id);
        } else {
          this.renderEvent(ev, now);
        }
      }
      this.showEventsEmpty();
      // Frames stop when the camera does (or the stream ended): the last one stays, marked.
      const watched =
        page.open && page.visible.has(this.id) && document.visibilityState !== "hidden";
      const age = performance.now() - this.lastFrame;
      const stale = page.frames && watched && this.shown > 0 && age > FRAME_STALE_MS;
      this.frameAge.hidden = !stale;
      if (stale) this.frameAge.textContent = `no new frame for ${fmtDuration(age)}`;
      if (!this.meter.hidden && performance.now() - this.lastLevel > LEVEL_STALE_MS) {
        this.meter.hidden = true;
      }
    }

    level(m) {
      if (!num(m.dbfs)) return;
      this.lastLevel = performance.now();
      this.meter.hidden = false;
      this.meter.dataset.dbfs = m.dbfs.toFixed(1);
      // -60 dBFS (silence, for a meter) to 0 dBFS (full scale)
      const pos = (db) => `${Math.min(100, Math.max(0, ((db + 60) / 60) * 100)).toFixed(1)}%`;
      this.meterFill.style.width = pos(m.dbfs);
      if (num(m.peak_dbfs)) this.meterPeak.style.left = pos(m.peak_dbfs);
      this.meterText.textContent = `${m.dbfs.toFixed(0)} dBFS`;
      this.meter.classList.toggle("loud", num(m.peak_dbfs) && m.peak_dbfs > -3);
    }

    runEntryBody(entry) {
      this.runEntry = entry;
      // the stream's own heartbeat is fresher; the run's entry speaks when it is missing
      const heard = this.status && performance.now() - this.lastStatus < 2000;
      if (!heard || GONE_STATES.has(entry.state)) {
        this.setState(entry.state);
        this.fields.windows_run.textContent = fmtInt(entry.windows_run);
        this.fields.windows_skipped.textContent = fmtInt(entry.windows_skipped);
      }
      this.reason.hidden = !entry.reason;
      this.reason.textContent = entry.reason || "";
      this.showDegraded();
    }

    setState(state) {
      if (!state) return;
      this.el.dataset.state = state;
      this.badge.textContent = state;
      this.fields.state.textContent = state;
      this.el.classList.toggle("gone", GONE_STATES.has(state));
    }

    showDegraded() {
      const bits = [];
      const state = this.el.dataset.state;
      if (state === "degraded") {
        bits.push((this.runEntry && this.runEntry.reason) || "a source is down");
      }
      for (const d of this.predDegraded) if (!bits.includes(d)) bits.push(d);
      const f = this.fields.degraded;
      f.textContent = bits.length ? bits.join(", ") : "no";
      f.classList.toggle("warn", bits.length > 0);
    }

    destroy() {
      this.gone = true; // a frame being decoded is closed undrawn
      this.pending = null;
      observer.unobserve(this.el);
      resized.unobserve(this.spark);
      this.el.remove();
    }
  }

  // ---- the grid ----

  // A sparkline is drawn again when its size changes (a tile enlarged, the grid's columns).
  const sparkTiles = new WeakMap();
  const resized = new ResizeObserver((entries) => {
    for (const e of entries) {
      const t = sparkTiles.get(e.target);
      if (t) t.drawSpark();
    }
  });

  const observer = new IntersectionObserver(
    (entries) => {
      for (const e of entries) {
        const id = e.target.dataset.stream;
        if (e.isIntersecting) page.visible.add(id);
        else page.visible.delete(id);
      }
      scheduleWatch();
    },
    { threshold: 0 },
  );

  function ensureTile(id) {
    let t = page.tiles.get(id);
    if (t) return t;
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(String(id))) return null;
    t = new Tile(id);
    page.tiles.set(id, t);
    grid.append(t.el);
    observer.observe(t.el);
    sparkTiles.set(t.spark, t);
    resized.observe(t.spark);
    if (page.large === id) applyLarge();
    layout();
    return t;
  }

  function removeTile(id) {
    const t = page.tiles.get(id);
    if (!t) return;
    t.destroy();
    page.tiles.delete(id);
    page.visible.delete(id);
    if (page.large === id) {
      page.large = null;
      applyLarge();
    }
    layout();
    scheduleWatch();
  }

  function clearTiles() {
    for (const t of page.tiles.values()) t.destroy();
    page.tiles.clear();
    page.visible.clear();
    layout();
  }

  function layout() {
    const n = page.tiles.size;
    grid.dataset.count = String(n);
    const cols = n <= 1 ? 1 : n <= 4 ? 2 : n <= 9 ? 3 : 4;
    grid.dataset.cols = String(cols);
    empty.hidden = n > 0 || !page.open;
  }

  // The grid follows the run's list: its order, and a stream that leaves it goes (a removed
  // stream leaves the list; an ended or failed one stays, shown as such). Behind a proxy
  // several runs send their run status (told apart by host and pid): their lists together.
  function applyRun(body) {
    const now = performance.now();
    page.runs.set(`${body.host} ${body.pid}`, { body, at: now });
    for (const [key, r] of page.runs) {
      if (now - r.at > RUN_GONE_MS) page.runs.delete(key);
    }
    const ids = [];
    for (const { body: run } of page.runs.values()) {
      for (const entry of run.streams || []) {
        const t = ensureTile(entry.id);
        if (!t) continue;
        ids.push(entry.id);
        if (run === body) t.runEntryBody(entry);
      }
    }
    const listed = new Set(ids);
    for (const [id, t] of [...page.tiles]) {
      // a stream that sent a status within the last 2 s and is not removed is kept: the run
      // status may not list a stream added a moment ago yet
      const fresh = t.status && now - t.lastStatus < 2000;
      if (!listed.has(id) && (!fresh || t.status.state === "removed")) removeTile(id);
    }
    // the runs' order, then the rest as they came
    let i = 0;
    for (const id of ids) {
      const el = page.tiles.get(id).el;
      if (grid.children[i] !== el) grid.insertBefore(el, grid.children[i] || null);
      i += 1;
    }
    showRun();
  }

  function showRun() {
    const runs = [...page.runs.values()].map((r) => r.body);
    const bits = [];
    if (runs.length === 1) {
      const r = runs[0];
      bits.push(`${r.host} · pid ${r.pid}`, `${r.model} on ${r.engine}`, r.state);
      const w = r.windows || {};
      bits.push(`${fmtInt(w.run)} windows, ${fmtInt(w.skipped)} skipped`);
      if (r.max_batch > 1) bits.push(`batches up to ${r.max_batch}`);
    } else if (runs.length > 1) {
      bits.push(`${runs.length} runs: ${runs.map((r) => `${r.host} · pid ${r.pid}`).join(", ")}`);
    } else {
      bits.push(page.open ? "waiting for the run's status…" : "connecting…");
    }
    runLine.textContent = bits.join("  ·  ");
  }

  function toggleLarge(id) {
    page.large = page.large === id ? null : id;
    applyLarge();
    const t = page.large && page.tiles.get(page.large);
    if (t) t.el.scrollIntoView({ block: "nearest" });
  }

  function applyLarge() {
    for (const t of page.tiles.values()) {
      const on = t.id === page.large;
      t.el.classList.toggle("large", on);
      t.el.setAttribute("aria-current", on ? "true" : "false");
    }
    grid.classList.toggle("has-large", page.large !== null && page.tiles.has(page.large));
    const path = page.large ? `/stream/${encodeURIComponent(page.large)}` : "/";
    if (location.pathname !== path) history.replaceState(null, "", path);
    scheduleWatch();
  }

  // ---- the banner ----

  function showBanner() {
    let text = "";
    if (!page.open) {
      if (page.tried) text = "web view not reachable: retrying";
    } else if (page.link.state === "down") {
      text = page.link.detail || "the run does not answer: retrying";
    }
    banner.textContent = text;
    banner.hidden = text === "";
    document.body.classList.toggle("offline", text !== "");
  }

  // ---- the WebSocket ----

  function scheduleWatch() {
    if (page.watchTimer) return;
    page.watchTimer = setTimeout(() => {
      page.watchTimer = 0;
      sendWatch();
    }, 100);
  }

  // Tell the server which streams' video to send: the tiles on screen (none while the page
  // is hidden) and the enlarged one.
  function sendWatch() {
    if (!page.open) return;
    const streams =
      document.visibilityState === "hidden"
        ? []
        : [...page.tiles.keys()].filter((id) => page.visible.has(id));
    const large = page.large && page.tiles.has(page.large) ? page.large : null;
    const text = JSON.stringify({ kind: "watch", streams, large });
    if (text === page.lastWatch) return;
    page.lastWatch = text;
    page.ws.send(text);
  }

  function hello(m) {
    page.frames = m.frames === true;
    page.fps = m.fps;
    const st = m.state || {};
    page.link = st.link || { state: "up", detail: "" };
    page.runs = new Map();
    clearTiles();
    const streams = st.streams || {};
    for (const id of Object.keys(streams)) {
      const s = streams[id] || {};
      if (s.status && s.status.state === "removed") continue;
      const t = ensureTile(id);
      if (!t) continue;
      if (s.status) t.statusBody(s.status);
      if (s.pred) t.prediction(s.pred);
      for (const e of s.events || []) t.event(e);
    }
    if (st.run) applyRun(st.run);
    const eps = (m.endpoints || []).join(", ");
    const where = m.source === "run" ? "served by the run" : `relaying ${eps}`;
    const video = page.frames ? `video ≤ ${m.fps} fps` : "no video";
    sourceLine.textContent = `avstream ${m.version || ""} · ${where} · ${video}`;
    for (const t of page.tiles.values()) t.setFrames(page.frames);
    applyLarge();
    showRun();
    showBanner();
    layout();
    scheduleWatch(); // once the observer has said which tiles are on screen
  }

  function onText(m) {
    switch (m.kind) {
      case "hello":
        hello(m);
        break;
      case "msg":
        onWire(m.topic, m.body);
        break;
      case "link":
        page.link = { state: m.state, detail: m.detail || "" };
        showBanner();
        break;
      case "level": {
        const t = page.tiles.get(m.stream);
        if (t) t.level(m);
        break;
      }
      default:
        break; // a kind added later: ignored, as the wire's unknown fields are
    }
  }

  function onWire(topic, body) {
    if (!body || typeof topic !== "string") return;
    if (topic === "run" || topic.startsWith("status.")) noteClock(body.t && body.t.wall_ns);
    if (topic === "run") {
      applyRun(body);
      return;
    }
    const dot = topic.indexOf(".");
    const kind = topic.slice(0, dot);
    const id = topic.slice(dot + 1);
    if (kind === "status") {
      if (body.state === "removed") {
        removeTile(id);
        return;
      }
      const t = ensureTile(id);
      if (t) t.statusBody(body);
    } else if (kind === "pred") {
      const t = ensureTile(id);
      if (t) t.prediction(body);
    } else if (kind === "event") {
      const t = ensureTile(id);
      if (t) t.event(body);
    }
  }

  // A video frame: uint16 big-endian n, n bytes of JSON {stream, seq, t_ns, width, height},
  // then the JPEG.
  function onBinary(buf) {
    if (buf.byteLength < 2) return;
    const n = new DataView(buf).getUint16(0, false);
    if (buf.byteLength < 2 + n) return;
    const meta = JSON.parse(textDecoder.decode(new Uint8Array(buf, 2, n)));
    const t = page.tiles.get(meta.stream);
    if (!t) return;
    t.frame(new Blob([new Uint8Array(buf, 2 + n)], { type: "image/jpeg" }));
  }

  function connect() {
    page.retryTimer = 0;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch (err) {
      retry();
      return;
    }
    ws.binaryType = "arraybuffer";
    page.ws = ws;
    ws.addEventListener("open", () => {
      page.open = true;
      page.backoff = BACKOFF_FIRST_MS;
      page.lastWatch = "";
      showBanner();
      showRun();
    });
    ws.addEventListener("message", (e) => {
      try {
        if (typeof e.data === "string") onText(JSON.parse(e.data));
        else onBinary(e.data);
      } catch (err) {
        console.warn("avstream: a message the page could not read:", err);
      }
    });
    ws.addEventListener("close", () => {
      if (page.ws !== ws) return;
      page.ws = null;
      page.open = false;
      page.tried = true;
      showBanner();
      showRun();
      retry();
    });
  }

  function retry() {
    if (page.retryTimer) return;
    const wait = page.backoff;
    page.backoff = Math.min(BACKOFF_MAX_MS, page.backoff * 2);
    page.retryTimer = setTimeout(connect, wait);
  }

  // ---- timers and page events ----

  setInterval(() => {
    const now = runNow();
    for (const t of page.tiles.values()) t.tick(now);
    clock.textContent = fmtTime(Date.now());
  }, 1000);
  clock.textContent = fmtTime(Date.now());

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && page.large) {
      page.large = null;
      applyLarge();
    }
  });
  document.addEventListener("visibilitychange", sendWatch);

  layout();
  showRun();
  connect();
})();

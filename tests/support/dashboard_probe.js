/* Installed by tests/support/browser.py before the dashboard's own script runs (CDP
 * Page.addScriptToEvaluateOnNewDocument). It only records what tests and benchmarks read
 * back through window.__probe; it does not change what the page does.
 *
 * Times are performance.now() (ms since navigation start) unless named `wall`
 * (performance.timeOrigin + now(): epoch ms, comparable with time.time() in Python).
 */
'use strict';

(() => {
  const now = () => performance.now();
  const wall = () => performance.timeOrigin + performance.now();
  const P = {
    sockets: [],   // one per WebSocket the page opened: {url, at, types, snapshotAt, ...}
    longtasks: [], // main-thread tasks over 50 ms: {start, duration}
    shown: null,   // {at, total}: first time the table showed the whole snapshot
  };
  window.__probe = P;

  // WebSocket: the URL of each connection (is `since` passed?) and the frames it received.
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const rec = { url: String(url), at: now(), types: [], snapshotAt: null,
                    snapshotBytes: 0, closeCode: null };
      P.sockets.push(rec);
      // Registered before the page sets onmessage, so it runs first: arrival time.
      this.addEventListener('message', (ev) => {
        const data = typeof ev.data === 'string' ? ev.data : '';
        const m = /^\{"type":"(\w+)"/.exec(data.slice(0, 40));
        let type = m ? m[1] : '?';
        if (!m) { try { type = String(JSON.parse(data).type); } catch { /* not JSON */ } }
        rec.types.push(type);
        if (type === 'snapshot' && rec.snapshotAt == null) {
          rec.snapshotAt = now();
          rec.snapshotBytes = data.length;
        }
      });
      this.addEventListener('close', (ev) => { rec.closeCode = ev.code; });
    }
  };

  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) P.longtasks.push({ start: e.startTime, duration: e.duration });
    }).observe({ type: 'longtask', buffered: true });
  } catch { P.longtasks = null; /* not supported */ }

  // "Shown": the count says "<n> instances" (the whole snapshot passed the empty filter)
  // and, unless n is 0, rows are in the table.
  const shownObs = new MutationObserver(() => {
    const count = document.getElementById('count');
    const m = count && /^(\d+) instances$/.exec(count.textContent);
    if (!m) return;
    const total = Number(m[1]);
    if (total && !document.querySelector('#rows tr.row')) return;
    P.shown = { at: now(), total };
    shownObs.disconnect();
  });
  shownObs.observe(document, { subtree: true, childList: true, characterData: true });

  // Row changes (benchmark): [wall, instance id, status shown] each time a row's status
  // badge text changes in place or a row enters the table. Times are when the observer
  // runs, i.e. right after the render that made the change (before paint).
  let rowObs = null;
  P.rowChanges = [];
  function onRows(muts) {
    const t = wall();
    const tbody = document.getElementById('rows');
    for (const mu of muts) {
      if (mu.target === tbody) {
        for (const n of mu.addedNodes) {
          if (n.dataset && n.dataset.id) {
            const b = n.querySelector('.badge');
            P.rowChanges.push([t, n.dataset.id, b ? b.textContent : '']);
          }
        }
      } else if (mu.target.classList && mu.target.classList.contains('badge')) {
        const tr = mu.target.closest('tr');
        if (tr && tr.dataset.id) P.rowChanges.push([t, tr.dataset.id, mu.target.textContent]);
      }
    }
  }
  P.watchRows = () => {
    P.rowChanges = [];
    rowObs = new MutationObserver(onRows);
    rowObs.observe(document.getElementById('rows'), { childList: true, subtree: true });
  };
  P.takeRows = () => {
    if (rowObs) { onRows(rowObs.takeRecords()); rowObs.disconnect(); rowObs = null; }
    const out = P.rowChanges;
    P.rowChanges = [];
    return out;
  };

  // Frames (benchmark): a rAF loop counting frames and the longest gap between two.
  let frames = null;
  P.startFrames = () => {
    const f = frames = { n: 0, last: null, maxGap: 0, over50: 0, on: true };
    const tick = (ts) => {
      if (!f.on) return;
      if (f.last != null) {
        const gap = ts - f.last;
        if (gap > f.maxGap) f.maxGap = gap;
        if (gap > 50) f.over50++;
      }
      f.last = ts;
      f.n++;
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  };
  P.stopFrames = () => {
    if (!frames) return null;
    frames.on = false;
    const { n, maxGap, over50 } = frames;
    frames = null;
    return { n, maxGap, over50 };
  };
  P.takeLongtasks = () => {
    const out = P.longtasks || [];
    if (P.longtasks) P.longtasks = [];
    return out;
  };
  P.wall = wall;
})();

/* Vigil dashboard: live status of MySQL/MariaDB instances.
 *
 * Data flow: WebSocket frames -> state (Map id -> row record + dirty flags) ->
 * at most one render per animation frame; for live updates, at most one per
 * DATA_FRAME_MS (a render costs a few ms of style, layout and paint whatever
 * changed, so a burst of transitions is drawn 10 times a second, not 60).
 *
 * The table is windowed: only the rows in (or near) the scroll viewport exist
 * in the DOM, between two spacer rows that stand in for the rest. With 2,000
 * rows a full table costs hundreds of ms of layout per change; a window of
 * ~40 rows costs next to nothing. Sorting/filtering runs at most every
 * SORT_INTERVAL_MS (at once on a snapshot or filter change); in between, rows
 * are updated in place.
 *
 * Server strings reach the DOM only via textContent / title, never innerHTML:
 * names and messages are untrusted.
 */
'use strict';

(() => {
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const CONNECT_TIMEOUT_MS = 10000; // give up on a socket stuck in CONNECTING
  const STABLE_MS = 10000;          // a connection open this long resets the backoff
  const PING_IDLE_MS = 20000;       // ping after this long without any frame...
  const PONG_WAIT_MS = 10000;       // ...and drop the socket if nothing answers in time
  const SORT_INTERVAL_MS = 500;
  const DATA_FRAME_MS = 100;        // renders caused by updates: at most one per 100 ms
  const FEED_INTERVAL_MS = 200;     // new feed entries are added at most this often
  const FLASH_MS = 1600;            // a row stays highlighted this long after a live change
  const FEED_MAX = 50;
  const OVERSCAN = 10;              // extra rows rendered above/below the viewport
  const RANK = { error: 0, unknown: 1, running: 2 };
  const KINDS = ['total', 'running', 'error', 'unknown'];

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  // Skip no-op writes: assigning textContent always replaces the text node.
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  const wrap = $('table-wrap');
  const tbody = $('rows');
  const topSpacer = $('spacer-top');
  const bottomSpacer = $('spacer-bottom');
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
  // Passed through to /ws but never shown anywhere. Taken out of the address bar (and so
  // out of the history, bookmarks and screenshots) once read; kept for this tab only, so
  // that a reload still works.
  const token = (() => {
    const params = new URLSearchParams(location.search);
    let t = params.get('token');
    try {
      if (t) sessionStorage.setItem('vigil.token', t);
      else t = sessionStorage.getItem('vigil.token');
    } catch { /* storage disabled: the token lives as long as the page */ }
    if (params.has('token')) {
      params.delete('token');
      const qs = params.toString();
      history.replaceState(null, '', location.pathname + (qs ? '?' + qs : '') + location.hash);
    }
    return t;
  })();

  // ---------------------------------------------------------------- state
  const rows = new Map();   // instance id -> rec (see newRec)
  const dirty = new Set();  // recs changed since the last frame
  // Recs whose <tr> has the `flash` class. The highlight is a plain class, set and later
  // removed, not a CSS animation: an animated fade restyles and repaints its rows every
  // frame while it runs, so a burst of changes kept the page drawing at 60 frames/s.
  const flashing = new Set();
  let view = [];            // recs passing the filter, sorted (as of the last reorder)
  let attached = [];        // recs whose <tr> is in the DOM (the window), in order
  let rowH = 0;             // measured row height in px (0 = not measured yet)
  let summary = { total: 0, running: 0, error: 0, unknown: 0 };
  const feed = [];          // recent transitions, newest first
  let lastId = null;        // resume point: snapshot cursor, then each transition id
  let haveSnapshot = false; // false until the first snapshot, and again after a reset
  let filterTerms = [];
  let filterStatus = 'all';
  const flags = { summary: true, recount: false, order: false, forceOrder: false, window: false, feed: true };
  let rafId = 0, wakeTimer = 0, wakeAt = 0, lastSortAt = 0, lastFeedAt = 0, titleTimer = 0;
  let lastRenderAt = -Infinity;

  // connection state
  let ws = null, sockOpen = false, openedAt = 0, attempt = 0;
  let retryTimer = 0, retryAt = 0, connectTimer = 0;
  let everConnected = false, closeInfo = '';
  let lastMsgAt = 0;    // any frame, pongs included (liveness)
  let lastUpdateAt = 0; // last data frame (shown in the banner)
  let pingSentAt = 0;

  // ---------------------------------------------------------------- formatting
  const str = (v) => (v == null ? '' : String(v));
  const normStatus = (s) => (s === 'running' || s === 'error' ? s : 'unknown');
  function parseTime(s) {
    const t = s ? Date.parse(s) : NaN;
    return Number.isFinite(t) ? t : null;
  }
  function fmtUTC(ms) {
    return ms == null ? '' : new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC');
  }
  // One formatter, reused: toLocaleTimeString builds a new one on every call.
  const clockFmt = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  const fmtClock = (ms) => clockFmt.format(ms);
  function fmtAgo(ms) {
    let s = Math.max(0, Math.floor(ms / 1000)); // clamp small client/server clock skew
    if (s < 60) return s + 's ago';
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + 'm ' + s + 's ago';
    let h = Math.floor(m / 60); m %= 60;
    if (h < 24) return h + 'h ' + m + 'm ago';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h ago';
  }
  function fmtLatency(v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
    if (v >= 1000) return (v / 1000).toFixed(v < 10000 ? 2 : 1) + ' s'; // a timeout: 3.00 s
    return (v < 10 ? v.toFixed(1) : String(Math.round(v))) + ' ms';
  }
  function fmtAddr(d) {
    if (!d.host) return '—';
    const host = d.host.includes(':') ? '[' + d.host + ']' : d.host; // IPv6 literal
    return d.port == null || d.port === '' ? host : host + ':' + d.port;
  }

  // Transition ids are Redis stream ids "<ms>-<seq>"; compare numerically.
  // Unparseable ids compare as NaN, so they are never treated as duplicates.
  function cmpId(a, b) {
    const [am, as] = a.split('-'), [bm, bs] = b.split('-');
    return (Number(am) - Number(bm)) || (Number(as || 0) - Number(bs || 0));
  }

  // ---------------------------------------------------------------- rows
  function newRec(id) {
    return { id, d: null, tr: null, c: null, inDom: false, stale: true, flashUntil: 0,
             sinceMs: null, checkedMs: null, search: '', sinceText: null, checkedText: null, tagsKey: null };
  }

  // The <tr> is built the first time a row scrolls into view.
  function buildRow(rec) {
    const c = {};
    const tr = el('tr', 'row');
    tr.dataset.id = rec.id;
    const tdName = el('td', 'c-name');
    tdName.append(c.name = el('div', 'name'), c.id = el('div', 'sub mono'));
    const tdStatus = el('td');
    tdStatus.append(c.badge = el('span', 'badge'));
    const tdReason = el('td', 'c-reason');
    tdReason.append(c.reason = el('span', 'reason'), c.msg = el('span', 'msg'));
    tr.append(tdName, tdStatus, c.addr = el('td', 'mono'), tdReason,
      c.since = el('td', 'c-time'), c.checked = el('td', 'c-time'),
      c.latency = el('td', 'num'), c.tags = el('td', 'c-tags'));
    rec.tr = tr;
    rec.c = c;
  }

  // Merge fields into a row (creating it if needed). `flash` marks a live change.
  // Returns true when the status changed.
  function upsert(fields, flash) {
    let rec = rows.get(fields.id);
    if (!rec) { rec = newRec(fields.id); rows.set(fields.id, rec); flags.order = true; }
    const p = rec.d || {};
    const m = Object.assign({}, p, fields);
    const d = {
      id: fields.id, name: str(m.name) || fields.id, host: str(m.host), port: m.port ?? null,
      tags: Array.isArray(m.tags) ? m.tags.map(str) : [], status: normStatus(m.status),
      since: m.since ?? null, checked_at: m.checked_at ?? null,
      latency_ms: typeof m.latency_ms === 'number' ? m.latency_ms : null,
      reason: m.reason ?? null, message: m.message ?? null,
    };
    const search = [d.name, d.id, d.host, ...d.tags].join('\n').toLowerCase();
    if (p.status !== d.status || p.name !== d.name || (search !== rec.search && filterTerms.length)) {
      flags.order = true; // position or filter membership may have changed
    }
    if (flash && p.status && p.status !== d.status) rec.flashUntil = Date.now() + FLASH_MS;
    rec.d = d;
    rec.search = search;
    rec.sinceMs = parseTime(d.since);
    rec.checkedMs = parseTime(d.checked_at);
    dirty.add(rec);
    return p.status !== d.status;
  }

  function updateRow(rec, now) {
    const { d, c, tr } = rec;
    rec.stale = false;
    const flash = rec.flashUntil > now;
    tr.className = 'row st-' + d.status + (flash ? ' flash' : '');
    if (flash) { flashing.add(rec); wakeIn(rec.flashUntil - now); }
    setText(c.name, d.name);
    c.name.title = d.name;
    setText(c.id, d.id);
    const addr = fmtAddr(d);
    setText(c.addr, addr);
    c.addr.title = addr;
    c.badge.className = 'badge badge-' + d.status;
    setText(c.badge, d.status);
    const why = d.status !== 'running';
    setText(c.reason, why ? str(d.reason) : '');
    setText(c.msg, why ? str(d.message) : '');
    c.msg.title = why ? str(d.message) : '';
    c.since.title = fmtUTC(rec.sinceMs);
    c.checked.title = fmtUTC(rec.checkedMs);
    setText(c.latency, fmtLatency(d.latency_ms));
    c.latency.classList.toggle('slow', d.latency_ms != null && d.latency_ms >= 500);
    const tagsKey = d.tags.join('\n');
    if (tagsKey !== rec.tagsKey) {
      rec.tagsKey = tagsKey;
      c.tags.replaceChildren(...d.tags.map((t) => el('span', 'tag', t)));
      c.tags.title = d.tags.join(', ');
    }
    rec.sinceText = rec.checkedText = null;
    refreshTimes(rec, now);
  }

  // Relative times change every second; write the DOM only when the text changes.
  function refreshTimes(rec, now) {
    const s = rec.sinceMs == null ? '—' : fmtAgo(now - rec.sinceMs);
    if (s !== rec.sinceText) { rec.c.since.textContent = s; rec.sinceText = s; }
    const k = rec.checkedMs == null ? '—' : fmtAgo(now - rec.checkedMs);
    if (k !== rec.checkedText) { rec.c.checked.textContent = k; rec.checkedText = k; }
  }

  function matches(rec) {
    if (filterStatus !== 'all' && rec.d.status !== filterStatus) return false;
    for (const t of filterTerms) if (!rec.search.includes(t)) return false;
    return true;
  }
  function cmpRec(a, b) {
    return (RANK[a.d.status] - RANK[b.d.status]) || collator.compare(a.d.name, b.d.name) ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  }

  // Re-filter and re-sort the whole set (cheap: no DOM work besides the counters).
  function reorder(now) {
    flags.order = flags.forceOrder = false;
    flags.window = true;
    lastSortAt = now;
    view = [];
    for (const rec of rows.values()) if (matches(rec)) view.push(rec);
    view.sort(cmpRec);
    const total = rows.size;
    setText($('count'), view.length === total ? total + ' instances' : view.length + ' of ' + total);
    const empty = $('empty');
    empty.hidden = view.length > 0;
    setText(empty, total ? 'No instances match the filter.'
      : haveSnapshot ? 'No instances configured.' : 'Waiting for data…');
  }

  // Put view[start, end) in the DOM between the spacers, moving only misplaced rows.
  function renderWindow(scrollTop, viewH, now) {
    flags.window = false;
    const h = rowH || 48;
    const n = view.length;
    const start = Math.min(n, Math.max(0, Math.floor(scrollTop / h) - OVERSCAN));
    const end = Math.min(n, Math.ceil((scrollTop + viewH) / h) + OVERSCAN);
    const want = view.slice(start, end);
    for (const rec of attached) rec.inDom = false;
    for (const rec of want) rec.inDom = true;
    for (const rec of attached) if (!rec.inDom && rec.tr) rec.tr.remove();
    let cur = topSpacer.nextSibling;
    for (const rec of want) {
      if (!rec.tr) buildRow(rec);
      if (rec.stale) updateRow(rec, now);
      else refreshTimes(rec, now); // times were not ticked while off-screen
      if (cur === rec.tr) cur = cur.nextSibling;
      else tbody.insertBefore(rec.tr, cur);
    }
    attached = want;
    topSpacer.style.height = start * h + 'px';
    bottomSpacer.style.height = (n - end) * h + 'px';
    topSpacer.hidden = start === 0;
    bottomSpacer.hidden = end === n;
    if (!rowH && want.length) {
      rowH = want[0].tr.getBoundingClientRect().height; // once; forces one layout
      if (rowH && rowH !== h) { flags.window = true; schedule(); }
    }
  }

  // Drop the highlight of rows whose time is up (or that left the window); wake for the next.
  function unflash(now) {
    let next = Infinity;
    for (const rec of flashing) {
      if (rec.flashUntil > now && rec.inDom) { next = Math.min(next, rec.flashUntil); continue; }
      flashing.delete(rec);
      if (rec.tr) rec.tr.classList.remove('flash');
    }
    if (next < Infinity) wakeIn(next - now);
  }

  // ---------------------------------------------------------------- summary & feed
  function setSummary(s) {
    if (!s || typeof s !== 'object') { flags.recount = true; return; }
    for (const k of KINDS) summary[k] = Number(s[k]) || 0;
    flags.summary = true;
    updateTitle();
  }
  function recount() {
    flags.recount = false;
    summary = { total: rows.size, running: 0, error: 0, unknown: 0 };
    for (const rec of rows.values()) summary[rec.d.status]++;
    flags.summary = true;
    updateTitle();
  }
  // Via a timer, not rAF: background tabs get no animation frames, and the title
  // is what someone watching from another tab sees. Coalesced: setting
  // document.title hundreds of times a second is surprisingly expensive.
  function updateTitle() {
    if (titleTimer) return;
    titleTimer = setTimeout(() => {
      titleTimer = 0;
      const t = summary.error > 0 ? '(' + summary.error + ') Vigil' : 'Vigil';
      if (document.title !== t) document.title = t;
    }, 250);
  }
  function renderSummary() {
    flags.summary = false;
    for (const k of KINDS) setText($('n-' + k), String(summary[k]));
    $('chip-error').classList.toggle('chip-alert', summary.error > 0);
  }

  function badge(status) { return el('span', 'badge badge-' + status, status); }
  function feedItem(f) {
    const li = el('li', 'feed-item');
    const time = el('time', 'feed-time mono', f.atMs == null ? '—' : fmtClock(f.atMs));
    time.title = fmtUTC(f.atMs);
    const name = el('span', 'feed-name', f.name);
    name.title = f.instance;
    const change = el('span', 'feed-change');
    change.append(badge(f.from), el('span', 'arrow', '→'), badge(f.to));
    if (f.reason) change.append(el('span', 'reason', f.reason));
    li.append(time, name, change);
    if (f.message) li.title = f.message;
    return li;
  }
  // Entries never change once shown: add the new ones on top, drop the oldest. (The DOM
  // is touched only here, at most every FEED_INTERVAL_MS, never per message.)
  function renderFeed(now) {
    flags.feed = false;
    lastFeedAt = now;
    const list = $('feed');
    const fresh = [];
    for (const f of feed) {
      if (f.li) break;
      fresh.push(f.li = feedItem(f));
    }
    if (fresh.length) list.prepend(...fresh);
    // Drop what fell off the end of the feed (their <li> are the last children)...
    const kept = new Set();
    for (const f of feed) if (f.li) kept.add(f.li);
    while (list.lastElementChild && !kept.has(list.lastElementChild)) list.lastElementChild.remove();
    // ...then add the history loaded at start (older than anything live) at the bottom.
    const older = [];
    for (const f of feed) if (!f.li) older.push(f.li = feedItem(f));
    if (older.length) list.append(...older);
    $('feed-empty').hidden = feed.length > 0;
  }

  // ---------------------------------------------------------------- render loop
  function schedule() { if (!rafId) rafId = requestAnimationFrame(render); }
  // For updates (transitions, REST refresh; not a snapshot): the next frame if the last
  // render is older than DATA_FRAME_MS, else once it is. A lone change still shows at the next frame; a storm
  // costs at most 10 renders a second instead of 60 (each one restyles, lays out, paints
  // and commits the page: ~10 ms of main thread whatever changed).
  function scheduleData() {
    if (rafId) return;
    const wait = lastRenderAt + DATA_FRAME_MS - performance.now();
    if (wait <= 0) schedule(); else wakeIn(wait);
  }
  // Ask for a render `ms` from now (for throttled work); keeps the earliest request.
  function wakeIn(ms) {
    const at = Date.now() + ms;
    if (wakeTimer && wakeAt <= at) return;
    clearTimeout(wakeTimer);
    wakeAt = at;
    wakeTimer = setTimeout(() => { wakeTimer = 0; schedule(); }, ms);
  }

  function render() {
    rafId = 0;
    lastRenderAt = performance.now();
    const now = Date.now();
    // Read geometry before any DOM write, so it costs no forced layout.
    const scrollTop = wrap.scrollTop, viewH = wrap.clientHeight;
    for (const rec of dirty) {
      if (rec.inDom) updateRow(rec, now); else rec.stale = true;
    }
    dirty.clear();
    if (flags.recount) recount();
    if (flags.summary) renderSummary();
    if (flags.forceOrder) reorder(now);
    else if (flags.order) {
      const wait = lastSortAt + SORT_INTERVAL_MS - now;
      if (wait <= 0) reorder(now); else wakeIn(wait);
    }
    if (flags.window) renderWindow(scrollTop, viewH, now);
    if (flashing.size) unflash(now);
    if (flags.feed) {
      const wait = lastFeedAt + FEED_INTERVAL_MS - now;
      if (wait <= 0) renderFeed(now); else wakeIn(wait);
    }
    renderConn(now);
  }

  // ---------------------------------------------------------------- messages
  function onSnapshot(m) {
    // A snapshot is the whole truth: update/insert what it has, drop the rest.
    const seen = new Set();
    for (const s of Array.isArray(m.instances) ? m.instances : []) {
      if (s && typeof s.id === 'string') { upsert(s, false); seen.add(s.id); }
    }
    for (const [id, rec] of rows) {
      if (!seen.has(id)) { if (rec.tr) rec.tr.remove(); rows.delete(id); dirty.delete(rec); }
    }
    if (m.summary) setSummary(m.summary); else flags.recount = true;
    lastId = m.cursor ? String(m.cursor) : null;
    haveSnapshot = true;
    attempt = 0;
    flags.forceOrder = true;
    if (diagnosed) { diagnosed = ''; $('server-error').hidden = true; }
    loadHistory(lastId);
  }

  function onTransition(m) {
    if (!haveSnapshot || typeof m.instance !== 'string') return; // the coming snapshot covers it
    const id = m.id == null ? null : String(m.id);
    if (id && lastId && cmpId(id, lastId) <= 0) return; // already reflected (replay overlap)
    if (id) lastId = id;
    const rec = rows.get(m.instance);
    upsert({
      id: m.instance, name: m.name || (rec ? rec.d.name : m.instance),
      status: m.to, since: m.at, reason: m.reason ?? null, message: m.message ?? null,
    }, true);
    if (m.summary) setSummary(m.summary); else flags.recount = true;
    feed.unshift(feedEntry(m));
    if (feed.length > FEED_MAX) feed.length = FEED_MAX; // their <li> go in renderFeed
    flags.feed = true;
  }

  function feedEntry(m) {
    return {
      instance: m.instance, name: str(m.name || m.instance), atMs: parseTime(m.at),
      from: normStatus(m.from), to: normStatus(m.to), reason: str(m.reason), message: str(m.message),
    };
  }

  // The recent changes from before this page opened, once: REST history up to the first
  // snapshot's cursor goes below whatever arrived live meanwhile.
  let historyLoaded = false;
  async function loadHistory(cursor) {
    if (historyLoaded || !cursor) return;
    historyLoaded = true;
    try {
      const resp = await fetch('/api/transitions?limit=' + FEED_MAX, { cache: 'no-store', headers: authHeaders() });
      if (!resp.ok) return;
      const body = await resp.json();
      const items = Array.isArray(body.transitions) ? body.transitions : [];
      for (let i = items.length - 1; i >= 0 && feed.length < FEED_MAX; i--) {
        const t = items[i];
        if (!t || typeof t.instance !== 'string' || cmpId(String(t.id), cursor) > 0) continue;
        feed.push(feedEntry(t));
      }
      flags.feed = true;
      scheduleData();
    } catch { /* only the feed's past is missing */ }
  }

  function authHeaders() {
    // A header, not ?token=: a URL ends up in proxies' access logs.
    return token ? { Authorization: 'Bearer ' + token } : {};
  }

  // A refused WebSocket handshake (403) tells the page nothing; REST says whether the
  // token is the reason.
  let diagnosed = '';
  async function diagnoseRefusal() {
    try {
      const resp = await fetch('/api/summary', { cache: 'no-store', headers: authHeaders() });
      let why = '';
      if (resp.status === 401) {
        why = token ? 'The API token in the address is wrong: open this page as /?token=<the gateway\'s VIGIL_API_TOKEN>.'
          : 'This gateway requires an API token: open this page as /?token=<the gateway\'s VIGIL_API_TOKEN>.';
      } else if (resp.ok && everConnected === false) {
        why = 'The gateway refused the live connection (is this page\'s origin in VIGIL_ALLOWED_ORIGINS?).';
      }
      if (why && why !== diagnosed) {
        diagnosed = why;
        setText($('server-error-text'), why);
        $('server-error').hidden = false;
      }
    } catch { /* the gateway is unreachable: the banner says so already */ }
  }

  function onMessage(raw) {
    let m;
    try { m = JSON.parse(raw); } catch { return; }
    if (!m || typeof m !== 'object') return;
    switch (m.type) {
      case 'snapshot': onSnapshot(m); lastUpdateAt = Date.now(); schedule(); return; // at once
      case 'transition': onTransition(m); break;
      case 'instance': {
        if (!haveSnapshot || typeof m.id !== 'string') return;
        const s = Object.assign({}, m);
        delete s.type;
        if (upsert(s, true)) flags.recount = true; // status moved without a server summary
        break;
      }
      case 'reset':
        // Resume point gone: ignore everything until the snapshot that follows,
        // which replaces the whole table.
        haveSnapshot = false;
        lastId = null;
        break;
      case 'error':
        showServerError(m);
        // A rejected resume point: start over with a fresh snapshot on a new connection.
        if (m.field === 'since') { lastId = null; haveSnapshot = false; if (ws) ws.close(1000); }
        break;
      default: return; // pong and unknown types are ignored (forward compatibility)
    }
    lastUpdateAt = Date.now();
    scheduleData();
  }

  function showServerError(m) {
    const field = m.field ? ' (' + str(m.field) + ')' : '';
    setText($('server-error-text'), 'Server rejected the request' + field + ': ' +
      (str(m.message) || 'unknown error') + ' — at ' + fmtClock(Date.now()));
    $('server-error').hidden = false;
  }

  // ---------------------------------------------------------------- connection
  function wsUrl() {
    const q = new URLSearchParams();
    if (lastId) q.set('since', lastId);
    if (token) q.set('token', token);
    const qs = q.toString();
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws' + (qs ? '?' + qs : '');
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    let sock;
    try { sock = new WebSocket(wsUrl()); } catch { scheduleReconnect(); return; }
    ws = sock; sockOpen = false; openedAt = 0;
    connectTimer = setTimeout(() => { if (ws === sock && !sockOpen) sock.close(); }, CONNECT_TIMEOUT_MS);
    // Handlers ignore events from a socket that is no longer the current one.
    sock.onopen = () => {
      if (ws !== sock) return;
      clearTimeout(connectTimer);
      sockOpen = true; openedAt = Date.now(); everConnected = true; closeInfo = ''; pingSentAt = 0;
      schedule();
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      lastMsgAt = Date.now();
      onMessage(ev.data);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      if (!sockOpen) diagnoseRefusal();
      dropped(ev.code && ev.code !== 1000 && ev.code !== 1006
        ? 'closed by server (' + ev.code + (ev.reason ? ': ' + ev.reason : '') + ')' : '');
    };
  }

  function dropped(why) {
    clearTimeout(connectTimer);
    if (openedAt && Date.now() - openedAt > STABLE_MS) attempt = 0;
    ws = null; sockOpen = false; closeInfo = why;
    scheduleReconnect();
  }

  // A half-open connection (sleep, NAT timeout, dead proxy) may never fire
  // 'close'. The gateway answers {"type":"ping"}, so probe a quiet socket and
  // abandon it at once (not via close(), whose handshake could hang) if mute.
  function keepalive(now) {
    if (!sockOpen) return;
    const quietSince = Math.max(lastMsgAt, openedAt);
    if (pingSentAt > quietSince) {
      if (now - pingSentAt > PONG_WAIT_MS) {
        const sock = ws;
        dropped('not responding');
        try { sock.close(); } catch { /* already closing */ }
      }
    } else if (now - quietSince > PING_IDLE_MS) {
      try { ws.send('{"type":"ping"}'); pingSentAt = now; } catch { /* onclose follows */ }
    }
  }

  // Exponential backoff, 0.5 s doubling up to 10 s; jitter picks 75–100 % of the
  // step so a restarted gateway is not hit by every open tab at the same instant.
  function scheduleReconnect() {
    const step = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(attempt, 10));
    attempt++;
    const delay = Math.round(step * (0.75 + Math.random() * 0.25));
    retryAt = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    schedule();
  }
  function retryNow() { if (retryTimer) connect(); }

  function renderConn(now) {
    const live = sockOpen && haveSnapshot;
    const conn = $('conn');
    setText(conn, live ? 'live' : sockOpen ? 'syncing' : retryTimer ? 'offline' : 'connecting');
    conn.classList.toggle('conn-live', live);
    conn.classList.toggle('conn-down', !live);
    const banner = $('banner');
    if (banner.hidden !== live) banner.hidden = live;
    if (live) return;
    let text, cls = 'banner banner-down';
    if (!everConnected && !retryTimer) {
      text = 'Connecting to server…';
      cls = 'banner banner-info';
    } else {
      if (sockOpen) text = 'Resynchronising — data may be stale, waiting for a fresh snapshot…';
      else if (retryTimer) text = 'Disconnected — data may be stale, reconnecting in ' +
        Math.max(1, Math.ceil((retryAt - now) / 1000)) + 's…';
      else text = 'Disconnected — data may be stale, reconnecting now…';
      text += lastUpdateAt ? ' Last update received ' + fmtAgo(now - lastUpdateAt) +
        ' (' + fmtClock(lastUpdateAt) + ').' : ' No update received yet.';
      if (closeInfo) text += ' Connection ' + closeInfo + '.';
    }
    if (banner.className !== cls) banner.className = cls;
    setText($('banner-text'), text);
    $('retry').hidden = !retryTimer;
  }

  // ---------------------------------------------------------------- controls
  function setStatusFilter(v) {
    filterStatus = Object.hasOwn(RANK, v) ? v : 'all';
    $('status-filter').value = filterStatus;
    for (const b of document.querySelectorAll('.chip')) {
      b.setAttribute('aria-pressed', String(b.dataset.status === filterStatus));
    }
    flags.forceOrder = true;
    schedule();
  }

  let filterTimer = 0;
  $('q').addEventListener('input', () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      filterTerms = $('q').value.toLowerCase().split(/\s+/).filter(Boolean);
      flags.forceOrder = true;
      schedule();
    }, 120);
  });
  $('status-filter').addEventListener('change', (e) => setStatusFilter(e.target.value));
  for (const b of document.querySelectorAll('.chip')) {
    b.addEventListener('click', () => setStatusFilter(b.dataset.status));
  }
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.key === '/' && !(t instanceof HTMLInputElement || t instanceof HTMLSelectElement)) {
      e.preventDefault();
      $('q').focus();
    }
  });
  wrap.addEventListener('scroll', () => { flags.window = true; schedule(); }, { passive: true });
  window.addEventListener('resize', () => { rowH = 0; flags.window = true; schedule(); });
  $('retry').addEventListener('click', retryNow);
  $('server-error-close').addEventListener('click', () => { $('server-error').hidden = true; });
  window.addEventListener('online', retryNow);

  // Relative times tick once per second, only for rows in the DOM whose text changed.
  setInterval(() => {
    const now = Date.now();
    for (const rec of attached) refreshTimes(rec, now);
    keepalive(now);
    renderConn(now);
  }, 1000);

  // Transitions carry status changes only; the time of the last check and its latency
  // change on every probe, which would be far too many frames to push to every client.
  // While the page is visible and live, refresh just those two fields over REST.
  const CHECKS_REFRESH_MS = 10000;
  async function refreshChecks() {
    if (document.hidden || !haveSnapshot) return;
    try {
      const resp = await fetch('/api/instances', { cache: 'no-store', headers: authHeaders() });
      if (!resp.ok) return;
      const body = await resp.json();
      for (const s of Array.isArray(body.instances) ? body.instances : []) {
        const rec = s && typeof s.id === 'string' ? rows.get(s.id) : null;
        if (!rec || !rec.d) continue;
        rec.d.checked_at = s.checked_at ?? null;
        rec.d.latency_ms = typeof s.latency_ms === 'number' ? s.latency_ms : null;
        rec.checkedMs = parseTime(rec.d.checked_at);
        dirty.add(rec);
      }
      scheduleData();
    } catch { /* the WebSocket's own reconnect logic reports outages */ }
  }
  setInterval(refreshChecks, CHECKS_REFRESH_MS);

  connect();
  schedule();
})();

"""The dashboard with 2,000 instances, in a real headless Chromium, measured in the page.

The state service and a gateway run over an inventory of 2,000 instances at an address
where nothing listens; nothing probes them. This process first XADDs one successful
ProbeResult per instance to ``<prefix>:probes`` (the fold makes them all ``running``: the
snapshot a browser gets), then, to measure, XADDs well-formed transitions straight to
``<prefix>:transitions`` at a steady rate (as the fold writes them, with a consistent
summary), so that the gateway and the page are what is measured.

Chromium (``--headless=new``, 1280x1000) is driven over the DevTools protocol
(``tests.support.browser``); ``tests/support/dashboard_probe.js`` runs in the page before
the dashboard's script and records the WebSocket frames, long tasks (> 50 ms), frames
(a requestAnimationFrame loop) and row changes (a MutationObserver on the table: when a
row's status badge text changes, or a row enters the table, with the time it happened).
CPU: the page's renderer main thread from /proc (its process found with a short trace),
all Chromium processes from CDP ``SystemInfo.getProcessInfo``; wall time of main-thread
tasks, script, layout and style from CDP ``Performance.getMetrics``.

Each measured run starts on a freshly loaded page (also a sample of the load time) and
ends before the page's 10 s REST refresh of last-check times, which is measured apart.
"""

from __future__ import annotations

import functools
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from shared.schema import ProbeResult, StatusName, Summary, Transition, encoder, rfc3339
from tests.bench.env import Bench, cpu_seconds
from tests.bench.report import mmm, table
from tests.support.browser import Chromium, Page, find_chromium, open_dashboard
from tests.support.wait import free_port, wait_for

N_INSTANCES = 2000
IN_VIEW = 20  # instances whose rows stay at the top of the table (their names sort first)
SETTLE = 1.0  # seconds after the table is shown before a run starts
TAIL = 0.5  # seconds measured after the last injection (the page catches up)
REPEATS = 3  # runs of each load (full mode)
REFRESH_AT = 10.0  # the page refreshes last-check times over REST every 10 s

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")

LOAD = """(() => {
  const nav = performance.getEntriesByType('navigation')[0] || {};
  const s = __probe.sockets[0] || {};
  const lt = (__probe.longtasks || []).filter((t) => t.start < __probe.shown.at);
  return { shown: __probe.shown.at, total: __probe.shown.total, html: nav.responseEnd,
           dom: nav.domContentLoadedEventEnd, ws: s.at, snapshot: s.snapshotAt,
           bytes: s.snapshotBytes, longest: Math.max(0, ...lt.map((t) => t.duration)) };
})()"""

# Jump the table to random places; per jump, the time until the frame after it is done,
# and whether the middle of the viewport then shows a row (not an empty spacer).
SCROLL = """async (n) => {
  const wrap = document.getElementById('table-wrap');
  const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r)));
  const out = [];
  let seed = 7;
  for (let i = 0; i < n; i++) {
    seed = (seed * 48271) % 2147483647;
    await frame();
    const t0 = performance.now();
    wrap.scrollTop = (seed / 2147483647) * (wrap.scrollHeight - wrap.clientHeight);
    await frame();
    const box = wrap.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    out.push([performance.now() - t0, !!(hit && hit.closest('tr.row'))]);
  }
  wrap.scrollTop = 0;
  await frame();
  return out;
}"""

# Type a filter (as the input event does); time until the count shows the filtered
# table and that frame is done (includes the page's 120 ms debounce).
FILTER = """async (terms) => {
  const q = document.getElementById('q'), count = document.getElementById('count');
  const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r)));
  const out = [];
  for (const term of terms) {
    await frame();
    const before = count.textContent;
    const changed = new Promise((r) => {
      const o = new MutationObserver(() => { o.disconnect(); r(); });
      o.observe(count, { childList: true, characterData: true, subtree: true });
    });
    const t0 = performance.now();
    q.value = term;
    q.dispatchEvent(new Event('input'));
    await changed;
    await frame();
    out.push([term, performance.now() - t0, before, count.textContent]);
  }
  return out;
}"""


class Flipper:
    """Transitions for the XADD, flipping instances between running and error."""

    def __init__(self, client: Any, prefix: str, ids: list[str]) -> None:
        self.r = client
        self.key = f"{prefix}:transitions"
        self.ids = ids
        self.status: dict[str, StatusName] = {}
        self.reset()

    def reset(self) -> None:
        """All running, as the snapshot says after all_running()."""
        self.status = dict.fromkeys(self.ids, "running")
        self.errors = 0

    def flip(self, ident: str) -> tuple[float, str, str]:
        """XADD one transition of ``ident``; returns (time.time() before the XADD, id, to)."""
        frm = self.status[ident]
        to: StatusName = "error" if frm == "running" else "running"
        self.status[ident] = to
        self.errors += 1 if to == "error" else -1
        failed = to == "error"
        data = encoder.encode(Transition(
            instance=ident, name=ident, from_=frm, to=to,
            at=rfc3339(time.time_ns() // 1_000_000) or "",
            reason="refused" if failed else None,
            message="connection refused" if failed else None,
            summary=Summary(total=len(self.ids), running=len(self.ids) - self.errors,
                            error=self.errors)))
        t = time.time()
        self.r.xadd(self.key, {"data": data}, maxlen=10_000, approximate=True)
        return t, ident, to

    def run(self, rate: float, seconds: float,
            pick: Callable[[int], str]) -> list[tuple[float, str, str]]:
        """``rate``/s for ``seconds`` on a monotonic schedule; the k-th one flips ``pick(k)``."""
        sent = []
        start = time.monotonic()
        for k in range(round(rate * seconds)):
            if (wait := start + k / rate - time.monotonic()) > 0:
                time.sleep(wait)
            sent.append(self.flip(pick(k)))
        return sent


def all_running(client: Any, prefix: str, ids: list[str], port: int) -> None:
    """One successful probe result per instance, folded by the state service."""
    tick = time.time_ns() // 1_000_000
    pipe = client.pipeline(transaction=False)
    for ident in ids:
        pipe.xadd(f"{prefix}:probes", {"data": encoder.encode(ProbeResult(
            instance=ident, prober="bench", tick=tick, at=tick, ok=True, latency_ms=1.0))})
    pipe.execute()

    def done() -> bool:
        summary = httpx.get(f"http://127.0.0.1:{port}/api/summary", timeout=2).json()
        return bool(summary["running"] == len(ids))

    wait_for(done, 30, interval=0.2, message="every instance running")


def metrics(page: Page) -> dict[str, float]:
    return {m["name"]: m["value"] for m in page.call("Performance.getMetrics")["metrics"]}


def load(page: Page, url: str) -> dict[str, Any]:
    """Navigate (again) and wait until the table shows every instance; the page's figures."""
    page.evaluate("delete window.__probe")
    page.goto(url)
    page.wait("window.__probe && __probe.shown", 30, "the table showing the snapshot")
    loaded_at = time.monotonic()
    figures = dict(page.evaluate(LOAD))
    assert figures["total"] == N_INSTANCES, figures
    figures["loaded_at"] = loaded_at
    figures["pid"] = renderer_pid(page)
    return figures


def pause(seconds: float) -> list[tuple[float, str, str]]:
    """No injections for ``seconds``."""
    time.sleep(max(0.0, seconds))
    return []


def window(page: Page, pid: int,
           work: Callable[[], list[tuple[float, str, str]]]) -> dict[str, Any]:
    """Run ``work`` (injections, or none) with the page's recorders on; what they saw.

    ``pid`` is the page's renderer: its main thread's CPU time is read from /proc.
    """
    page.evaluate("__probe.takeLongtasks(); __probe.watchRows(); __probe.startFrames(); 0")
    m0, c0, a0, t0 = metrics(page), cpu_seconds(pid, pid), chromium_cpu(page), time.monotonic()
    sent = work()
    time.sleep(TAIL)
    m1, c1, a1, t1 = metrics(page), cpu_seconds(pid, pid), chromium_cpu(page), time.monotonic()
    frames = page.evaluate("__probe.stopFrames()")
    rows = page.evaluate("__probe.takeRows()")
    longtasks = page.evaluate("__probe.takeLongtasks()")
    return {"seconds": t1 - t0, "sent": sent, "rows": rows, "frames": frames, "cpu": c1 - c0,
            "all_cpu": a1 - a0,
            "longtasks": [t["duration"] for t in longtasks],
            **{k: m1[k] - m0[k] for k in METRICS},
            "heap_mib": m1["JSHeapUsedSize"] / 2**20, "nodes": m1["Nodes"]}


def chromium_cpu(page: Page) -> float:
    """CPU seconds of every Chromium process (browser, renderers, GPU/compositing, ...)."""
    info = page.browser.send("SystemInfo.getProcessInfo")["processInfo"]
    return float(sum(p["cpuTime"] for p in info))


def renderer_pid(page: Page) -> int:
    """The process of the page's renderer: the one that runs our Runtime.evaluate (a trace)."""
    page.browser.start_trace(("disabled-by-default-devtools.timeline",))
    page.evaluate("0")
    events = page.browser.stop_trace()
    pids = Counter(e["pid"] for e in events if e.get("name") == "EvaluateScript").most_common(1)
    assert pids, "no EvaluateScript event in the trace"
    return int(pids[0][0])


def latencies(sent: list[tuple[float, str, str]],
              rows: list[list[Any]]) -> tuple[list[float], int]:
    """XADD → row showing the new status (ms), for each injection whose row showed it before
    the next change of the same instance; and how many never showed it (row not in the
    window, or drawn in the same render as the next change of that row)."""
    changes: dict[str, list[tuple[float, str]]] = {}
    for t, ident, status in rows:
        changes.setdefault(ident, []).append((t / 1000.0, status))
    nxt: dict[int, float] = {}
    last: dict[str, int] = {}
    for k, (t, ident, _) in enumerate(sent):
        if ident in last:
            nxt[last[ident]] = t
        last[ident] = k
    out, unseen = [], 0
    for k, (t, ident, to) in enumerate(sent):
        end = nxt.get(k, float("inf"))
        hit = next((c for c, s in changes.get(ident, ()) if t - 0.001 <= c < end and s == to),
                   None)
        if hit is None:
            unseen += 1
        else:
            out.append(1000.0 * (hit - t))
    return out, unseen


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(bench: Bench, quick: bool, binary: str) -> dict[str, Any]:
    seconds = 2.0 if quick else 5.0
    ids = [f"db-{i:04d}" for i in range(N_INSTANCES)]
    envs = ("prod", "staging", "dev")
    nobody = free_port()
    prefix = f"dash{free_port()}"
    inv = bench.inventory(prefix, [
        {"id": ident, "host": "127.0.0.1", "port": nobody, "tags": [envs[i % 3], f"rack-{i % 40}"]}
        for i, ident in enumerate(ids)], {"interval": 60.0, "timeout": 3.0, "rise": 1})
    env = bench.env(prefix, inv, None)
    bench.service("state", env)
    bench.service("gateway", env)
    port = int(env["VIGIL_GATEWAY_PORT"])
    url = f"http://127.0.0.1:{port}/"
    bench.wait_ready(port, prefix)
    client = bench.client()
    all_running(client, prefix, ids, port)
    flipper = Flipper(client, prefix, ids)
    rng = random.Random(1)
    scenarios: dict[str, Callable[[int], str]] = {
        "in view": lambda k: ids[k % IN_VIEW],
        "spread": lambda k: ids[rng.randrange(N_INSTANCES)],
    }
    plan = ([("in view", 50.0), ("in view", 200.0), ("spread", 200.0)] if quick else
            [(s, r) for s in scenarios for r in (50.0, 200.0, 1000.0)])
    out: dict[str, Any] = {"seconds": seconds, "loads": [], "runs": []}
    with Chromium(bench.dir, binary) as browser:
        page = open_dashboard(browser, "about:blank")
        page.call("Performance.enable")
        out["version"] = browser.send("Browser.getVersion")["product"]

        def fresh() -> tuple[int, float]:
            flipper.reset()
            fig = load(page, url)
            out["loads"].append(fig)
            time.sleep(max(0.0, fig["loaded_at"] + SETTLE - time.monotonic()))
            return fig["pid"], fig["loaded_at"]

        for _ in range(1 if quick else REPEATS):
            pid, loaded_at = fresh()
            out["runs"].append({"scenario": "idle", "rate": 0.0,
                                **window(page, pid, functools.partial(pause, seconds))})
            if not quick and "refresh" not in out:
                # The same page, on until past its first REST refresh of last-check times.
                left = loaded_at + REFRESH_AT + 1.0 - time.monotonic()
                out["refresh"] = window(page, pid, functools.partial(pause, left))
            for name, rate in plan:
                pid, _ = fresh()
                res = window(page, pid,
                             functools.partial(flipper.run, rate, seconds, scenarios[name]))
                out["runs"].append({"scenario": name, "rate": rate, **res})
        fresh()
        out["scroll"] = page.apply(SCROLL, 10 if quick else 40)
        out["filter"] = page.apply(FILTER, ["prod", "db-01", "rack-7 staging", ""])
        out["errors"] = page.errors()
    client.close()
    return out


def ms(v: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def spread(values: list[float]) -> str:
    """One value as is; several as min / median / max; none as a dash."""
    return mmm(values, "{:.2f}") if len(values) > 1 else ms(values[0] if values else None,
                                                              "{:.2f}")


def cost_row(label: str, ws: list[dict[str, Any]], idle: tuple[float, float]) -> list[str]:
    """One table row over the repeats of a run: medians, latencies pooled, worst long task."""
    med = statistics.median
    n = len(ws[0]["sent"])
    lat: list[float] = []
    for w in ws:
        lat += latencies(w["sent"], w["rows"])[0]
    per = [1000 * (w["cpu"] - idle[0] * w["seconds"]) / n for w in ws] if n else []
    per_all = [1000 * (w["all_cpu"] - idle[1] * w["seconds"]) / n for w in ws] if n else []
    long = [t for w in ws for t in w["longtasks"]]
    return [
        label,
        f"{med([100 * w['cpu'] / w['seconds'] for w in ws]):.0f} %",
        f"{med([100 * w['TaskDuration'] / w['seconds'] for w in ws]):.0f} %",
        spread(per), spread(per_all),
        " / ".join(f"{med([1000 * w[k] / w['seconds'] for w in ws]):.0f}" for k in METRICS[1:]),
        f"{len(long) / len(ws):.1f} · {max(long, default=0):.0f}",
        f"{med([w['frames']['n'] / w['seconds'] for w in ws]):.0f} · "
        f"{max(w['frames']['maxGap'] for w in ws):.0f}",
        f"{ms(pct(lat, 0.5))} / {ms(pct(lat, 0.99))} / {ms(max(lat, default=None))}"
        if n else "—",
        f"{len(lat) / len(ws):.0f} of {n}" if n else "—",
    ]


def section(bench: Bench, quick: bool) -> str:
    binary = find_chromium()
    title = "### Dashboard in a browser\n\n"
    if binary is None:
        return (title + "Not measured: no Chromium/Chrome binary on PATH (Debian: "
                "`apt-get install chromium`).")
    r = run(bench, quick, binary)
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for x in r["runs"]:
        groups.setdefault((x["scenario"], x["rate"]), []).append(x)
    idle_runs = groups[("idle", 0.0)]
    idle = (statistics.median(w["cpu"] / w["seconds"] for w in idle_runs),
            statistics.median(w["all_cpu"] / w["seconds"] for w in idle_runs))
    repeats = len(idle_runs)
    loads = r["loads"]
    load_rows = [
        ["HTML received", mmm([x["html"] for x in loads], "{:.0f}")],
        ["WebSocket opened", mmm([x["ws"] for x in loads], "{:.0f}")],
        ["snapshot frame received", mmm([x["snapshot"] for x in loads], "{:.0f}")],
        [f"**table shows {N_INSTANCES:,} instances**", mmm([x["shown"] for x in loads], "{:.0f}")],
        ["snapshot received → shown", mmm([x["shown"] - x["snapshot"] for x in loads], "{:.0f}")],
        ["longest task before shown", mmm([x["longest"] for x in loads], "{:.0f}")],
    ]
    cost_rows = [cost_row("idle" if scenario == "idle" else f"{scenario}, {rate:.0f}/s", ws,
                          idle) for (scenario, rate), ws in groups.items()]
    if "refresh" in r:
        cost_rows.insert(1, cost_row("idle, with the 10 s REST refresh", [r["refresh"]], idle))
    scroll = [t for t, _ in r["scroll"]]
    blank = sum(not ok for _, ok in r["scroll"])
    filters = "; ".join(f"`{term or '(cleared)'}` → {after or '—'} in {t:.0f} ms"
                        for term, t, _, after in r["filter"])
    last = r["runs"][-1]
    errors = r["errors"]
    return (
        title
        + f"{r['version']}, headless, 1280x1000, on the same 2 cores as Redis, the state "
        "service, the gateway and this process. The state service and one gateway serve "
        f"{N_INSTANCES:,} instances (an address where nothing listens; nothing probes: one "
        "successful probe result per instance is injected into `<prefix>:probes` so all are "
        "`running`, then transitions are XADDed straight to `<prefix>:transitions`). "
        "Figures are measured in the page (see `tests/bench/dashboard.py`).\n\n"
        f"Load, ms from navigation start, {len(loads)} loads (min / median / max; the first "
        "is cold):\n\n" + table(["", "ms"], load_rows)
        + f"\n\nSteady transitions for {r['seconds']:g} s on a freshly loaded page (plus "
        f"{TAIL:g} s to catch up), {repeats} run(s) each. *in view*: {IN_VIEW} instances "
        "flipping running ↔ error whose rows stay at the top of the table, so every "
        "transition changes a row on screen; *spread*: random instances among all "
        f"{N_INSTANCES:,} (errors pile up at the top, most rows changed are off screen). "
        "Main thread CPU = the CPU time of the renderer's main thread (/proc; % of one "
        "core); busy = the wall time of its tasks (CDP `Performance.getMetrics` "
        "`TaskDuration`; above CPU when the thread waits for a core: 2 cores for "
        "everything); per transition = CPU minus the idle rate, divided by the transitions "
        "(min / median / max over the runs), for the main thread and for all Chromium "
        "processes (raster and compositing are in software here; CDP "
        "`SystemInfo.getProcessInfo`); script / layout / style: the wall time of "
        "each (`getMetrics`); long tasks: a PerformanceObserver (tasks over 50 ms). Frames: a "
        "requestAnimationFrame loop in the page (it also makes the idle page draw every "
        "frame). Latency = XADD → the row's status text changed in the DOM (a "
        "MutationObserver, right after the render, before paint), for the transitions whose "
        "row showed the new status. Not seen: changes of the same row drawn in the same "
        "render (the row shows the latest; *in view* at high rates, where only the changes "
        "drawn before the row's next change count, which biases that latency low), and "
        "*spread* rows off "
        "screen (those that turn `error` enter the table at the next re-sort, every "
        "500 ms).\n\n"
        + table(["load", "main thread CPU", "busy", "main thread CPU ms per transition",
                 "all Chromium CPU ms per transition",
                 "script / layout / style (ms/s)", "long tasks per run · max (ms)",
                 "frames/s · longest gap (ms)", "XADD → row p50 / p99 / max (ms)",
                 "changes seen per run"], cost_rows)
        + f"\n\nScrolling: {len(scroll)} jumps to random places in the {N_INSTANCES:,}-row "
        f"table, jump → next frame done: {mmm(scroll, '{:.0f}')} ms (min / median / max; "
        f"includes waiting for the frame), {blank} showing an empty viewport. Filtering "
        f"(typing → count and rows updated, including the 120 ms debounce): {filters}. "
        f"After the last run: JS heap {last['heap_mib']:.1f} MiB, {last['nodes']:.0f} DOM "
        "nodes (some detached, not yet collected)."
        + (f"\n\nThe page reported errors: {errors}" if errors else "")
    )


if __name__ == "__main__":
    import sys

    with Bench() as b:
        print(section(b, quick="--quick" in sys.argv))

"""report.html in a real browser: headless Chromium opens the page from disk, and the test
checks there are no console errors and no network requests, sorts and filters through the DOM
and reads back the visible rows, opens a row's cells, and takes a screenshot.

Chromium is driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`: commands
on fd 3, replies on fd 4, NUL-separated JSON), so no WebDriver, websocket library or browser
download is needed. Skipped when no Chromium is installed (Debian: `apt-get install -y
chromium`); `CHROMIUM=/path/to/chrome` picks another binary.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_report import FAILED_REASON, LAST_LOG_LINE, TINY, budget_table, build, write_grid

from leaderboards.report import write_report

SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--remote-debugging-pipe"]


def chromium_binary() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


class Browser:
    """One headless Chromium and one page, driven by DevTools protocol commands."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0):
        self.timeout, self.next_id, self.buf, self.events = timeout, 0, b"", []
        cmd_r, self.cmd_w = os.pipe()  # we write commands; Chromium reads fd 3
        self.res_r, res_w = os.pipe()  # Chromium writes fd 4; we read

        def fds():  # in the child: the two pipe ends become fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(profile.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"], pass_fds=(3, 4),
            preexec_fn=fds, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(cmd_r)
        os.close(res_w)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=900,
                  deviceScaleFactor=1, mobile=False)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.res_r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"Chromium did not answer within {self.timeout} s")
            chunk = os.read(self.res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (crashed?)")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", session=True, expression=expression,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def run(self, statements: str) -> None:
        """Statements in their own scope (top-level `const`s persist between evaluations)."""
        self.js(f"(() => {{ {statements} }})()")

    def choose(self, key: str, value: str) -> None:
        self.run(f"const s = document.querySelector('select[data-key={json.dumps(key)}]');"
                 f"s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change'));")

    def search(self, text: str) -> None:
        self.run(f"const q = document.getElementById('search'); q.value = {json.dumps(text)};"
                 "q.dispatchEvent(new Event('input'));")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors since the last open."""
        self.js("0")  # flush events queued behind the last command
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> bytes:
        size = self.send("Page.getLayoutMetrics", session=True)["cssContentSize"]
        png = base64.b64decode(self.send(
            "Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1400, "height": min(size["height"], 4000),
                  "scale": 1})["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.cmd_w)
            os.close(self.res_r)
            self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install -y chromium, or set CHROMIUM=path)")
    b = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny-report")
    results, board, seeds, curves, plots, _ = build(TINY, tmp)
    path = write_report(tmp / "report.html", results, board, seeds, curves, plots=plots)
    return path, board, seeds


@pytest.fixture
def page(browser, tiny_page):
    path, board, seeds = tiny_page
    browser.open(path.as_uri())
    return browser, board, seeds


def seeds_of(seeds, algo: str, div: str):
    return seeds[(seeds["algorithm"] == algo) & (seeds["divergence"] == div)]


# Visible rows of the leaderboard, as {header label: cell text without the baseline badge}.
ROWS = """[...document.querySelectorAll('#table-board tbody tr.row')].map(tr => {
  const heads = [...document.querySelectorAll('#table-board thead th')].map(th => th.dataset.col);
  return Object.fromEntries([...tr.cells].map((td, i) => {
    const c = td.cloneNode(true);
    c.querySelectorAll('.badge').forEach(b => b.remove());
    return [heads[i] || '', c.textContent.trim()];
  }));
})"""


def keys(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["algorithm"], r["divergence"]) for r in rows]


def test_loads_without_console_errors_or_network(page):
    b, board, _ = page
    assert b.errors() == []
    assert [u for u in b.requests() if not u.startswith(("file://", "data:"))] == []
    assert b.js("document.querySelectorAll('#table-board tbody tr.row').length") == len(board.table)
    # accuracy with CIs, against length, learning curves, frontier, pass@k, forgetting
    assert b.js("document.querySelectorAll('figure.plot img').length") == 6
    assert b.js("[...document.querySelectorAll('figure.plot img')].every(i => i.naturalWidth > 0)")


def test_sort_by_a_column_and_read_back_the_rows(page):
    b, board, _ = page
    b.js("document.querySelector('th[data-col=\"wall_time_s\"]').click()")
    rows = b.js(ROWS)
    walls = [float(r["wall_time_s"]) for r in rows]
    assert walls == sorted(walls) and len(rows) == len(board.table)
    want = board.table.sort_values("wall_time_s_mean", kind="stable")
    assert keys(rows) == list(zip(want["algorithm"], want["divergence"], strict=True))
    b.js("document.querySelector('th[data-col=\"wall_time_s\"]').click()")
    walls = [float(r["wall_time_s"]) for r in b.js(ROWS)]
    assert walls == sorted(walls, reverse=True)
    # the mean keeps its ± std and CI text while sorting by the number
    b.js("document.querySelector('th[data-col=\"accuracy\"]').click()")
    rows = b.js(ROWS)
    assert all(" ± " in r["accuracy"] and "[" in r["accuracy"] for r in rows)
    means = [float(r["accuracy"].split(" ± ")[0]) for r in rows]
    assert means == sorted(means)
    assert b.errors() == []


def test_filter_by_key_and_search(page):
    b, board, _ = page
    b.choose("divergence", "kl_k3")
    rows = b.js(ROWS)
    assert {r["divergence"] for r in rows} == {"kl_k3"}
    assert len(rows) == (board.table["divergence"] == "kl_k3").sum() == 1
    b.choose("divergence", "")
    b.search("probl2")
    assert keys(b.js(ROWS)) == [("dr_grpo", "probl2")]
    assert b.js("document.querySelector('#sec-board .count').textContent") == "1 of 4 rows"
    b.search("")
    b.js("document.getElementById('sig-only').click()")
    # no difference in the tiny grid is significant: only the baseline row stays
    significant = (board.table["accuracy_p_value"] < 0.05).sum()
    assert significant == 0 and keys(b.js(ROWS)) == [("dr_grpo", "none")]
    assert b.js("document.querySelector('#table-board tr.baseline .badge.base') !== null")
    assert b.errors() == []


def test_a_row_opens_its_cells_config_and_curves(page, tmp_path):
    b, _, seeds = page
    b.js("document.querySelector('#table-board tr.baseline').click()")
    cells = b.js("""[...document.querySelectorAll('tr.detail tr.cellrow')].map(tr => {
      const heads = [...document.querySelectorAll('tr.detail table.celltable th')]
        .map(th => th.textContent);
      return {...Object.fromEntries([...tr.cells].map((td, i) => [heads[i], td.textContent])),
              lines: tr.querySelectorAll('svg.spark polyline').length};
    })""")
    want = seeds_of(seeds, "dr_grpo", "none")
    assert [(c["seed"], c["status"], c["lines"], c["cell"]) for c in cells] == [
        (str(s.seed), "completed", 2, s.cell_id) for s in want.itertuples()]
    if "base" in want:  # the base model's seed, as written (not as a metric: 0, not 0.000)
        assert [c["base"] for c in cells] == [str(int(v)) for v in want["base"]]
    assert [c["accuracy"] for c in cells] == [f"{v:.3f}" for v in want["accuracy"]]
    b.js("document.querySelector('tr.detail button.cfgbtn').click()")
    assert b.js("document.querySelectorAll('tr.detail tr.cfgrow:not([hidden])').length") == 1
    lines = b.js("document.querySelector('tr.detail pre.config').textContent").splitlines()
    assert 'divergence.name = "none"' in lines and "rollout.samples_per_prompt = 8" in lines
    assert b.js("[...document.querySelectorAll('tr.detail pre.config .differs')]"
                ".map(e => e.textContent.split(' = ')[0])") == [
        "divergence.beta", "divergence.name", "pretrain.seed", "run.seed"]
    assert b.js("document.querySelectorAll('tr.detail .groupcurve polyline').length") == 2
    assert b.errors() == []
    png = b.screenshot(tmp_path / "report.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    SCREENSHOT_COPY.write_bytes(png)  # a copy to look at by hand


@pytest.fixture(scope="module")
def synthetic_page(tmp_path_factory):
    """Two failed-or-diverged cells in grpo/kl_k3; with rng_seed 0, grpo/none is better than
    the baseline (p = 0.006) and dr_grpo/kl_k3 worse (p = 0.035)."""
    tmp = tmp_path_factory.mktemp("synthetic-report")
    root = write_grid(tmp / "grid", failed={("grpo", "kl_k3", 1)},
                      diverged={("grpo", "kl_k3", 2)}, rng_seed=0)
    results, board, seeds, curves, _, _ = build(root)
    extra = {"Matched budget": budget_table(board)}
    return write_report(tmp / "report.html", results, board, seeds, curves, extra), board


def test_failed_and_diverged_cells_show_reason_and_log_tail(browser, synthetic_page):
    path, _ = synthetic_page
    browser.open(path.as_uri())
    browser.choose("algorithm", "grpo")
    browser.choose("divergence", "kl_k3")
    rows = browser.js(ROWS)
    assert keys(rows) == [("grpo", "kl_k3")] and rows[0]["flags"] == "1 failed, 1 diverged"
    browser.js("document.querySelector('#table-board tr.row').click()")
    reasons = browser.js("[...document.querySelectorAll('tr.why .reason')].map(e => e.textContent)")
    assert reasons == [f"failed: {FAILED_REASON}", "diverged: loss is nan (at step 5)"]
    logs = browser.js("[...document.querySelectorAll('tr.why details.log pre')]"
                      ".map(e => e.textContent)")
    assert logs[0].splitlines()[-1] == LAST_LOG_LINE
    assert logs[1].splitlines()[-1] == "step 5 loss nan"
    assert browser.errors() == []


def test_significant_differences_stand_out_by_direction(browser, synthetic_page):
    path, board = synthetic_page
    browser.open(path.as_uri())
    marks = browser.js("""[...document.querySelectorAll('#table-board tr.row')].map(tr => {
      const d = tr.querySelector('td.sig');
      return [tr.cells[2].textContent, tr.cells[3].firstChild.textContent,
              d ? (d.classList.contains('better') ? 'better' : 'worse') : ''];
    })""")
    t = board.table
    want = {(a, d): "" if not p < 0.05 else "better" if diff > 0 else "worse"
            for a, d, diff, p in zip(t["algorithm"], t["divergence"], t["accuracy_diff"],
                                     t["accuracy_p_value"], strict=True)}
    assert {(a, d): m for a, d, m in marks} == want
    assert sorted(want.values()) == ["", "", "better", "worse"]
    browser.js("document.getElementById('sig-only').click()")
    assert sorted(keys(browser.js(ROWS))) == [("dr_grpo", "kl_k3"), ("dr_grpo", "none"),
                                               ("grpo", "none")]
    assert browser.errors() == []


def test_one_filter_bar_filters_every_table(browser, synthetic_page):
    path, board = synthetic_page
    browser.open(path.as_uri())
    extra = ROWS.replace("table-board", "table-t1")
    assert len(browser.js(extra)) == len(board.table)
    browser.choose("algorithm", "grpo")
    assert {r["algorithm"] for r in browser.js(extra)} == {"grpo"}
    assert {r["algorithm"] for r in browser.js(ROWS)} == {"grpo"}
    # the budget table's difference is coloured by its adjusted p-value (the first row's 0.004)
    sig = browser.js("[...document.querySelectorAll('#table-t1 td.sig')].length")
    t = budget_table(board)
    want = (t["algorithm"] == "grpo") & (t["accuracy_vs_kl_k3_p_adj"] < 0.05)
    assert want.sum() == 1 and sig == 2  # the difference and its adjusted p-value
    assert browser.errors() == []


def test_pages_and_the_column_menu(browser, tmp_path):
    root = write_grid(tmp_path / "grid", algorithms=("grpo",),
                      divergences=tuple(f"d{i}" for i in range(30)), seeds=(0, 1))
    results, board, seeds, curves, _, _ = build(root)
    browser.open(write_report(tmp_path / "report.html", results, board, seeds,
                              curves).as_uri())
    assert len(browser.js(ROWS)) == 30  # 100 rows a page by default
    browser.run("const s = document.querySelector('#sec-board .toolbar select');"
                "s.value = '25'; s.dispatchEvent(new Event('change'));")
    first = browser.js(ROWS)
    assert len(first) == 25
    assert "page 1 of 2" in browser.js("document.querySelector('#sec-board .pager').textContent")
    browser.js("[...document.querySelectorAll('#sec-board .pager button')].pop().click()")
    second = browser.js(ROWS)
    assert len(second) == 5 and not set(keys(first)) & set(keys(second))
    assert sorted(keys(first + second)) == sorted(
        zip(board.table["algorithm"], board.table["divergence"], strict=True))
    assert "n" in browser.js(ROWS)[0]
    browser.run("const box = [...document.querySelectorAll('#sec-board .colmenu label')]"
                ".find(l => l.textContent.trim() === 'n').querySelector('input');"
                "box.click();")
    assert "n" not in browser.js(ROWS)[0] and "accuracy" in browser.js(ROWS)[0]
    assert browser.errors() == []


def test_swept_keys_and_bases_filter_and_open_per_base(browser, tmp_path):
    root = write_grid(tmp_path / "grid", algorithms=("grpo",), divergences=("none", "kl_k3"),
                      seeds=(0, 1), bases=(0, 1),
                      sweep=("divergence.beta", {"kl_k3": [0.01, 0.04]}))
    results, board, seeds, curves, _, _ = build(root)
    assert board.keys == ["task", "algorithm", "divergence", "divergence.beta"]
    browser.open(write_report(tmp_path / "report.html", results, board, seeds,
                              curves).as_uri())
    options = browser.js("[...document.querySelectorAll('select[data-key=\"divergence.beta\"] "
                         "option')].map(o => o.value)")
    assert options == ["", "0.01", "0.04", "—"]  # "—": the group that does not sweep beta
    browser.choose("divergence.beta", "0.04")
    rows = browser.js(ROWS)
    assert [(r["divergence"], r["divergence.beta"]) for r in rows] == [("kl_k3", "0.04")]
    browser.js("document.querySelector('#table-board tr.row').click()")
    cells = browser.js("[...document.querySelectorAll('tr.detail tr.cellrow')]"
                       ".map(tr => tr.dataset.cell)")
    want = seeds[(seeds["divergence"] == "kl_k3") & (seeds["divergence.beta"] == 0.04)]
    assert sorted(cells) == sorted(want["cell_id"]) and len(cells) == 4  # 2 bases x 2 seeds
    by_base = browser.js("document.querySelector('tr.detail .byextra').textContent")
    assert by_base.startswith("accuracy by base: 0 ") and ", 1 " in by_base
    browser.choose("divergence.beta", "—")
    assert [(r["divergence"], r["divergence.beta"]) for r in browser.js(ROWS)] == [
        ("none", "—")]
    assert browser.errors() == []

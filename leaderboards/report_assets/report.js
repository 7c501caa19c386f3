/* The report page: tables built from the JSON in #report-data (written by leaderboards/report.py),
   sortable by any column, filtered by one bar for the whole page, paginated, and a row opens
   its cells (status, metrics, learning curve, config, log). No network, no dependencies. */
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const DASH = "\u2014";
  const PAGE_SIZES = [25, 100, 500, 0]; // 0: all rows
  const state = { filters: {}, search: "", sigOnly: false };
  const tables = [];

  // ---- small helpers -------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  function num(x) {
    if (!isNum(x)) return x === null || x === undefined ? DASH : String(x);
    const a = Math.abs(x);
    if (a !== 0 && (a < 0.01 || a >= 1e5)) return x.toPrecision(3);
    if (Number.isInteger(x) && a >= 100) return String(x);
    return x.toFixed(a >= 100 ? 1 : 3);
  }
  // A spread or a difference next to a mean of that scale: 0.006, not 0.00577.
  const fix3 = (x) => (isNum(x) && (x === 0 || (Math.abs(x) >= 5e-4 && Math.abs(x) < 100)) ? x.toFixed(3) : num(x));
  const signed = (x) => (isNum(x) && x > 0 ? "+" : "") + fix3(x);
  const pval = (x) => (!isNum(x) ? DASH : x < 0.001 ? "<0.001" : x.toFixed(3));
  const text = (x) => (x === null || x === undefined ? "" : String(x));
  const keyText = (x) => (x === null || x === undefined ? DASH : String(x)); // a key not swept
  function compare(a, b) { // nulls last in both directions is handled by the caller
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }
  // +1 better, -1 worse, 2 significant without a direction, 0 not significant.
  function significance(diff, p, dir) {
    if (!isNum(diff) || !isNum(p) || !(p < D.sig_level)) return 0;
    if (dir === "max") return diff > 0 ? 1 : diff < 0 ? -1 : 0;
    if (dir === "min") return diff < 0 ? 1 : diff > 0 ? -1 : 0;
    return 2;
  }
  const SIG_CLASS = { 1: "sig better", "-1": "sig worse", 2: "sig" };

  // ---- sparklines (SVG markup from numbers only, so innerHTML is safe) -------------------
  // A series is [steps, values]; evenly spaced steps come as {s: first, d: stride}.
  function xs(s) {
    if (Array.isArray(s[0])) return s[0];
    const { s: x0, d } = s[0];
    return s[1].map((_, i) => x0 + i * d);
  }
  function domain(seriesLists) {
    let y0 = Infinity, y1 = -Infinity;
    for (const list of seriesLists) for (const s of list || []) {
      for (const y of s[1]) if (isNum(y)) { y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    }
    return Number.isFinite(y0) ? [y0, y1] : null;
  }
  function spark(series, w, ht, dom, big) {
    series = (series || []).map((s) => (s && s[1].length ? [xs(s), s[1]] : null));
    const pts = series.filter((s) => s);
    if (!pts.length || !dom) return null;
    let x0 = Infinity, x1 = -Infinity;
    for (const s of pts) { x0 = Math.min(x0, s[0][0]); x1 = Math.max(x1, s[0][s[0].length - 1]); }
    let [y0, y1] = dom;
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const L = big ? 38 : 2, B = big ? 14 : 2, T = big ? 6 : 2, R = 3;
    const X = (x) => (L + ((x - x0) / (x1 - x0)) * (w - L - R)).toFixed(1);
    const Y = (y) => (ht - B - ((y - y0) / (y1 - y0)) * (ht - B - T)).toFixed(1);
    let out = `<svg class="spark" width="${w}" height="${ht}" viewBox="0 0 ${w} ${ht}" aria-hidden="true">`;
    if (big) {
      out += `<text x="${L - 3}" y="${T + 7}" text-anchor="end">${num(y1)}</text>` +
        `<text x="${L - 3}" y="${ht - B}" text-anchor="end">${num(y0)}</text>` +
        `<text x="${L}" y="${ht - 2}">${x0}</text>` +
        `<text x="${w - R}" y="${ht - 2}" text-anchor="end">step ${x1}</text>` +
        `<line class="axis" x1="${L}" y1="${ht - B}" x2="${w - R}" y2="${ht - B}"/>`;
    }
    series.forEach((s, k) => {
      if (!s) return;
      const p = s[0].map((x, i) => `${X(x)},${Y(s[1][i])}`);
      out += `<polyline class="s${k}" points="${p.join(" ")}"/>`;
      if (s[0].length <= 12) out += p.map((q) => {
        const [cx, cy] = q.split(",");
        return `<circle class="s${k}" cx="${cx}" cy="${cy}" r="${big ? 2 : 1.5}"/>`;
      }).join("");
    });
    const span = h("span", { class: "sparkbox" });
    span.innerHTML = out + "</svg>";
    return span;
  }
  function legend(names) {
    return h("span", { class: "legend" }, ...names.map((n, k) => h("span", { class: `key s${k}` }, n)));
  }

  // ---- one table -------------------------------------------------------------------------
  class Table {
    constructor(spec, host) {
      this.s = spec;
      this.host = host;
      this.sortBy = null; // [view index, +1 | -1]
      this.page = 0;
      this.size = 100;
      this.open = new Set();
      if (spec.curves) { // the mean eval curve as a column after the primary metric's test
        const k = Math.max(0, D.group_curve_names.findIndex((n) => n.startsWith("eval")));
        this.curveOf = (c) => c.map((s, j) => (j === k ? s : null));
        this.curveDom = domain(spec.curves.map((c) => (c ? [c[k]] : [])));
        let at = -1; // after the primary metric's block (its rank, mean, n, Δ, p)
        spec.view.forEach((v, i) => { if (v.lead || v.kind === "key") at = i; });
        const v = { kind: "spark", label: "curve", title: `${D.group_curve_names[k]}, mean over seeds` };
        spec.view.splice(at + 1, 0, v);
      }
      this.hidden = new Set(spec.view.map((v, i) => (v.hidden ? i : -1)).filter((i) => i >= 0));
      this.keyCol = Object.fromEntries(spec.keys.map((k) => [k, spec.cols.indexOf(k)]));
      this.sigCols = spec.view.filter((v) => (v.kind === "diff" && v.p !== undefined) ||
        (v.kind === "p" && v.sig && v.d !== undefined));
      this.build();
    }
    isBaseline(row) { return this.s.baseline !== null && row[this.s.baseline] === true; }
    isSig(row) {
      return this.sigCols.some((v) => v.kind === "diff"
        ? significance(row[v.c], row[v.p], v.dir) !== 0
        : significance(row[v.d], row[v.c], v.dir) !== 0);
    }
    rows() {
      const s = this.s, terms = state.search.toLowerCase().split(/\s+/).filter(Boolean);
      let idx = s.rows.map((_, i) => i).filter((i) => {
        const row = s.rows[i];
        for (const [k, val] of Object.entries(state.filters)) {
          if (val !== "" && k in this.keyCol && keyText(row[this.keyCol[k]]) !== val) return false;
        }
        if (terms.length) {
          const hay = s.keys.map((k) => text(row[this.keyCol[k]])).join(" ").toLowerCase();
          if (!terms.every((t) => hay.includes(t))) return false;
        }
        return !(state.sigOnly && !this.isSig(row) && !this.isBaseline(row));
      });
      if (this.sortBy) {
        const [vi, dir] = this.sortBy, c = s.view[vi].c;
        idx = idx.map((i) => [i, s.rows[i][c]]).sort((a, b) => {
          const na = a[1] === null, nb = b[1] === null;
          if (na || nb) return na === nb ? a[0] - b[0] : na ? 1 : -1;
          return dir * compare(a[1], b[1]) || a[0] - b[0];
        }).map((p) => p[0]);
      }
      return idx;
    }
    build() {
      const s = this.s;
      this.info = h("span", { class: "count" });
      this.pager = h("span", { class: "pager" });
      const size = h("select", { "aria-label": "rows per page", on: { change: (e) => {
        this.size = Number(e.target.value); this.page = 0; this.render(); } } },
      ...PAGE_SIZES.map((n) => h("option", { value: n, selected: n === this.size }, n ? `${n} rows` : "all rows")));
      const menu = h("details", { class: "colmenu" }, h("summary", {}, "columns"),
        ...s.view.map((v, i) => h("label", {}, h("input", { type: "checkbox", checked: !this.hidden.has(i),
          on: { change: (e) => { e.target.checked ? this.hidden.delete(i) : this.hidden.add(i); this.render(); } } }),
        ` ${v.label}`)));
      this.table = h("table", { class: "board", id: `table-${s.id}` });
      this.host.append(h("div", { class: "toolbar" }, this.info, this.pager, size, menu),
        h("div", { class: "scroll" }, this.table));
      this.render();
    }
    head() {
      const tr = h("tr", {});
      if (this.s.cells) tr.append(h("th", { class: "tog" }));
      this.s.view.forEach((v, i) => {
        if (this.hidden.has(i)) return;
        const sorted = this.sortBy && this.sortBy[0] === i ? this.sortBy[1] : 0;
        const th = h("th", {
          class: `${v.kind}${v.kind === "spark" ? "" : " sortable"}`, "data-col": v.label,
          title: v.title || this.s.cols[v.c] || v.label, tabindex: v.kind === "spark" ? null : 0,
          "aria-sort": sorted ? (sorted > 0 ? "ascending" : "descending") : null,
        }, v.label, sorted ? h("span", { class: "arrow" }, sorted > 0 ? " \u25B2" : " \u25BC") : null);
        if (v.kind !== "spark") {
          const go = () => { this.sortBy = [i, sorted > 0 ? -1 : 1]; this.page = 0; this.render(); };
          th.addEventListener("click", go);
          th.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
        }
        tr.append(th);
      });
      return h("thead", {}, tr);
    }
    cell(v, row, ri) {
      const x = v.c === undefined ? null : row[v.c];
      switch (v.kind) {
        case "key": {
          const td = h("td", { class: "key" }, keyText(x));
          if (this.isBaseline(row) && v === this.s.view.filter((w) => w.kind === "key").pop()) {
            td.append(" ", h("span", { class: "badge base" }, "baseline"));
          }
          return td;
        }
        case "text": return h("td", { class: "text" }, text(x));
        case "int": case "rank": return h("td", { class: "num" }, x === null ? DASH : String(x));
        case "num": {
          let t = num(x);
          if (isNum(x) && v.std !== undefined && isNum(row[v.std])) t += ` \u00B1 ${fix3(row[v.std])}`;
          const td = h("td", { class: "num" }, t);
          if (v.lo !== undefined && isNum(row[v.lo])) td.append(h("span", { class: "ci" }, ` [${num(row[v.lo])}, ${num(row[v.hi])}]`));
          return td;
        }
        case "diff": {
          if (this.isBaseline(row)) return h("td", { class: "num muted" }, "baseline");
          const sg = v.p === undefined ? 0 : significance(x, row[v.p], v.dir);
          const td = h("td", { class: `num ${SIG_CLASS[sg] || ""}` }, signed(x), sg ? h("sup", {}, "*") : null);
          if (v.lo !== undefined && isNum(row[v.lo])) td.append(h("span", { class: "ci" }, ` [${signed(row[v.lo])}, ${signed(row[v.hi])}]`));
          return td;
        }
        case "p": {
          const sg = v.sig && v.d !== undefined ? significance(row[v.d], x, v.dir) : 0;
          const note = v.note !== undefined ? text(row[v.note]) : "";
          if (this.isBaseline(row)) return h("td", { class: "num muted" }, DASH);
          return h("td", { class: `num ${SIG_CLASS[sg] || ""}` }, pval(x), note ? h("span", { class: "ci" }, ` (${note})`) : null);
        }
        case "spark": {
          const c = this.s.curves[ri];
          return h("td", { class: "sparkcell" }, c ? spark(this.curveOf(c), 110, 24, this.curveDom) : null);
        }
        default: return h("td", {}, text(x));
      }
    }
    render() {
      const idx = this.rows(), total = this.s.rows.length;
      const per = this.size || idx.length || 1, pages = Math.max(1, Math.ceil(idx.length / per));
      this.page = Math.min(this.page, pages - 1);
      const shown = idx.slice(this.page * per, this.page * per + per);
      const ncols = this.s.view.filter((_, i) => !this.hidden.has(i)).length + (this.s.cells ? 1 : 0);
      const body = h("tbody", {});
      for (const ri of shown) {
        const row = this.s.rows[ri];
        const cls = ["row"];
        if (this.isBaseline(row)) cls.push("baseline");
        if (this.isSig(row)) cls.push("has-sig");
        const tr = h("tr", { class: cls.join(" "), "data-row": ri });
        if (this.s.cells) {
          const open = this.open.has(ri), n = this.s.cells[ri].length;
          tr.append(h("td", { class: "tog" }, h("button", { type: "button", "aria-expanded": open,
            title: `${n} cell${n === 1 ? "" : "s"}`, disabled: n === 0 }, open ? "\u25BE" : "\u25B8")));
          if (n) tr.addEventListener("click", () => { open ? this.open.delete(ri) : this.open.add(ri); this.render(); });
          tr.classList.add("opens");
        }
        this.s.view.forEach((v, i) => { if (!this.hidden.has(i)) tr.append(this.cell(v, row, ri)); });
        body.append(tr);
        if (this.s.cells && this.open.has(ri)) {
          body.append(h("tr", { class: "detail" }, h("td", { colspan: ncols }, cellsView(this.s.cells[ri], this.s.curves ? this.s.curves[ri] : null))));
        }
      }
      this.table.replaceChildren(this.head(), body);
      this.info.textContent = idx.length === total ? `${total} rows` : `${idx.length} of ${total} rows`;
      this.pager.replaceChildren();
      if (pages > 1) {
        const go = (p) => () => { this.page = p; this.render(); };
        this.pager.append(h("button", { type: "button", disabled: this.page === 0, on: { click: go(this.page - 1) } }, "\u2039 prev"),
          ` page ${this.page + 1} of ${pages} `,
          h("button", { type: "button", disabled: this.page >= pages - 1, on: { click: go(this.page + 1) } }, "next \u203A"));
      }
    }
  }

  // ---- a group's cells -------------------------------------------------------------------
  const C = D.cells, CI = Object.fromEntries(C.cols.map((c, i) => [c, i]));
  function configRow(ci, ncols) {
    const diff = C.cfg[ci], r = C.rows[ci];
    const td = h("td", { colspan: ncols });
    const tr = h("tr", { class: "cfgrow", hidden: true }, td);
    const build = () => {
      const git = C.git[ci] ? `, git ${C.git[ci]}` : "";
      if (!diff) { td.append(h("p", { class: "muted" }, `${r[CI.cell_id]}: no config recorded${git}`)); return; }
      const all = Object.assign({}, C.cfg_common, diff), n = Object.keys(diff).length;
      td.append(h("p", { class: "muted" }, `${r[CI.cell_id]}${git}: the resolved config; ` +
        `highlighted: the ${n} key${n === 1 ? "" : "s"} that differ across the grid`));
      const pre = h("pre", { class: "config" });
      for (const k of Object.keys(all).sort()) {
        pre.append(h("span", { class: k in diff ? "differs" : null }, `${k} = ${JSON.stringify(all[k])}`), "\n");
      }
      td.append(pre);
    };
    const button = h("button", { type: "button", class: "cfgbtn", "aria-expanded": "false" }, "config");
    button.addEventListener("click", () => {
      if (!td.childNodes.length) build();
      tr.hidden = !tr.hidden;
      button.setAttribute("aria-expanded", String(!tr.hidden));
    });
    return [button, tr];
  }
  function cellsView(ids, groupCurve) {
    const metrics = [...C.metrics, "wall_time_s"].filter((c) => c in CI);
    const lead = ["seed", ...C.extras].filter((c) => c in CI);
    const ncols = lead.length + metrics.length + 4;
    const sorted = ids.slice().sort((a, b) => {
      for (const c of [...C.extras, "seed", "cell_id"]) {
        if (!(c in CI)) continue;
        const r = compare(C.rows[a][CI[c]] ?? "", C.rows[b][CI[c]] ?? "");
        if (r) return r;
      }
      return a - b;
    });
    const box = h("div", { class: "cells" });
    if (groupCurve) {
      box.append(h("div", { class: "groupcurve" }, spark(groupCurve, 320, 90, domain([groupCurve]), true),
        legend(D.group_curve_names.map((n) => `${n} (mean over seeds)`))));
    }
    for (const ex of C.extras) { // e.g. per base: primary metric mean over completed cells
      const by = new Map();
      for (const ci of sorted) {
        const r = C.rows[ci], k = text(r[CI[ex]]);
        if (!by.has(k)) by.set(k, []);
        if (r[CI.status] === "completed" && isNum(r[CI[D.primary]])) by.get(k).push(r[CI[D.primary]]);
      }
      if (by.size > 1 && D.primary in CI) {
        box.append(h("p", { class: "byextra" }, `${D.primary} by ${ex}: `, [...by].map(([k, v]) =>
          `${k} ${v.length ? num(v.reduce((a, b) => a + b, 0) / v.length) : DASH} (n=${v.length})`).join(", ")));
      }
    }
    const cdom = domain(sorted.map((ci) => C.curve[ci]));
    const head = h("tr", {}, ...lead.map((c) => h("th", {}, c)), h("th", { class: "text" }, "status"),
      h("th", {}, "curve"), h("th", {}), ...metrics.map((c) => h("th", {}, c)), h("th", { class: "text" }, "cell"));
    const body = h("tbody", {});
    for (const ci of sorted) {
      const r = C.rows[ci], st = r[CI.status];
      const [button, cfg] = configRow(ci, ncols);
      const value = (c) => { // seed, base and swept keys as written; metrics formatted
        const x = r[CI[c]], plain = c === "seed" || C.extras.includes(c);
        return h("td", { class: isNum(x) ? "num" : "text" }, isNum(x) && !plain ? num(x) : text(x ?? DASH));
      };
      body.append(h("tr", { class: `cellrow st-${st}`, "data-cell": r[CI.cell_id] }, ...lead.map(value),
        h("td", { class: "text" }, h("span", { class: `badge st-${st}` }, st)),
        h("td", { class: "sparkcell" }, C.curve[ci] ? spark(C.curve[ci], 120, 26, cdom) : null),
        h("td", {}, button), ...metrics.map(value), h("td", { class: "cid" }, r[CI.cell_id])));
      if (st !== "completed") {
        const why = text(r[CI.reason]) || "no reason recorded";
        const step = isNum(r[CI.diverged_step]) ? ` (at step ${r[CI.diverged_step]})` : "";
        const td = h("td", { colspan: ncols }, h("div", { class: "reason" }, `${st}: ${why}${step}`));
        if (C.log[ci]) td.append(h("details", { class: "log", open: true }, h("summary", {}, "log tail"), h("pre", {}, C.log[ci])));
        body.append(h("tr", { class: `why st-${st}` }, td));
      }
      body.append(cfg);
    }
    box.append(h("div", { class: "scroll" }, h("table", { class: "celltable" }, h("thead", {}, head), body)));
    if (C.curve_names.length) box.append(legend(C.curve_names.map((n) => `${n} (per cell)`)));
    return box;
  }

  // ---- the filter bar --------------------------------------------------------------------
  function filterBar() {
    const bar = document.getElementById("filters"), board = D.tables[0];
    for (const k of D.keys) {
      const c = board.cols.indexOf(k);
      const vals = [...new Set(board.rows.map((r) => keyText(r[c])))]
        .sort((a, b) => (a === DASH) - (b === DASH) || compare(a, b)); // "not swept" last
      state.filters[k] = "";
      bar.append(h("label", {}, `${k} `, h("select", { "data-key": k, on: { change: (e) => {
        state.filters[k] = e.target.value; refresh(); } } },
      h("option", { value: "" }, `all (${vals.length})`), ...vals.map((v) => h("option", { value: v }, v)))));
    }
    bar.append(h("label", {}, "search ", h("input", { type: "search", id: "search", placeholder: "any key text", on: {
      input: (e) => { state.search = e.target.value; refresh(); } } })));
    bar.append(h("label", {}, h("input", { type: "checkbox", id: "sig-only", on: { change: (e) => {
      state.sigOnly = e.target.checked; refresh(); } } }), ` significant only (p < ${D.sig_level})`));
  }
  function refresh() {
    for (const t of tables) { t.page = 0; t.render(); }
    const task = state.filters.task || "";
    for (const f of document.querySelectorAll("figure.plot")) {
      f.hidden = task !== "" && f.dataset.task !== "" && f.dataset.task !== task;
    }
  }

  filterBar();
  for (const spec of D.tables) {
    const host = document.querySelector(`.table-host[data-table="${spec.id}"]`);
    if (host) tables.push(new Table(spec, host));
  }
  window.report = { tables, state, refresh }; // for scripted checks and the console
})();

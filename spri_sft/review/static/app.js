/*
 * spri-sft view: the record viewer's page. Vanilla JS, no build step, no framework, nothing from a CDN.
 *
 * Routes (location.hash):
 *   #/                         overview per mode
 *   #/records?<filters>        the record list; the filters, sort and page live in the URL
 *   #/record/<id>?<filters>    one record; <filters> are those of the list it was opened from (j/k walk that list)
 *
 * Data: the server's JSON API (GET api/overview, api/records?..., api/record/<id>; POST api/decisions with the
 * page's token in X-SPRI-Token), or, in an exported file, the JSON in <script type="application/json"
 * id="spri-data"> ({"overview", "records": [full records], "decisions"?: {id: decision}, "sample"?: {"of"}}),
 * answered here with the same filters (search = case-insensitive substring of prompt and final response) and
 * no fetch at all.
 *
 * Safety: every text written by a model, a reviewer or the server goes into the DOM as text (textContent,
 * createTextNode); attributes are set only by fixed names, and hrefs are built here from encodeURIComponent.
 * (This file is inlined in a <script> by the export: it must never contain a closing script tag.)
 *
 * Stable hooks for browser tests. "#x" = element id (one per page), "[x]" = data-testid (may repeat):
 *   page      #view [view] (the current view's root), #status-message [status-message] (loading / errors),
 *             #nav-overview, #nav-records, #run-path, #mode-badge (text "export" or "read-only"), #help-toggle, #help,
 *             #export-banner (export mode only)
 *   overview  [overview-view]; per mode [mode-card] with data-mode=MODE; inside it [mode-records] (count),
 *             [status-count] rows with data-status=STATUS, [accepted-share], [failed-share], [unscored-share],
 *             [chart-rounds-principles], [chart-rounds-response], [chart-final-score-principles],
 *             [chart-final-score-response] (<svg>; each bar [bar] with data-key and data-count),
 *             [no-critic] instead of the final-score charts of a mode no critic judged (its [unscored-share] "–");
 *             [calls-per-record], [tokens-per-record] (tables); #decision-counts [decision-counts];
 *             [figure] <img> with data-name=NAME per report figure
 *   list      [records-view]; filters #filter-mode, #filter-status, #filter-score-stage, #filter-min-score,
 *             #filter-max-score, #filter-unscored (checkbox), #filter-failed (checkbox), #filter-source,
 *             #filter-split, #filter-decision, #search (debounced), #sort, #order, #filters-reset;
 *             #records-total (the number only), #page-info, #page-first, #page-prev, #page-next, #page-last;
 *             #records-table, each row [record-row] with data-id=ID (class "selected" for the j/k selection),
 *             its link [record-link]; #records-empty when nothing matches
 *   record    [record-view] with data-id=ID; #record-id, #record-mode, #record-status, #record-prompt,
 *             #record-error (failed records only); #record-prev, #record-next, #back-to-list;
 *             #principles-rounds: each [principles-round] data-round=N; #fixed-rules (fixed-rule modes);
 *             #response-rounds: each [response-round] data-round=N; #draft-to-final (3+ versions);
 *             inside a round: [version-text] (with diff: <del class="diff-del"> / <ins class="diff-ins">;
 *             [diff-too-long] when the texts are too long to diff, then [diff-before] and [diff-after]),
 *             [version-unchanged] instead when a revision repeats the previous version word for word;
 *             [critique], [score] (text: the score or "unscored"), [score-distribution] (<svg>, bars [bar]),
 *             [score-mean]; #toggle-diff (checkbox: diffs or plain text); #usage-table, rows [usage-row]
 *             data-role=ROLE ("replayed" column only when a role has replayed calls), [usage-failed-note];
 *             #same-prompt, each column [same-prompt-column] data-mode=MODE data-id=ID
 *             (class "current" for this record) with [same-prompt-status], [same-prompt-response];
 *             #decision-panel (absent in read-only and export mode, then #decisions-off says why),
 *             #decision-current (text "excluded: REASON", "excluded", "kept" or "none"), #decision-reason,
 *             #decision-exclude, #decision-keep
 *
 * Keyboard (ignored while typing in a field; also listed in index.html's #help):
 *   j / k      next / previous record (on the list page: move the selection; Enter opens the selected row)
 *   x or e     exclude this record, with the reason typed in #decision-reason (Enter in that box does the same)
 *   y          keep this record
 *   u          back to the list      /  focus the search box      g  overview      ?  toggle the help
 */
"use strict";

(function () {
  const PAGE_SIZE = 50;
  const SEARCH_DEBOUNCE_MS = 250;
  // Above this many word pairs (after trimming the common start and end) the diff table costs visible time and
  // memory; the two texts are shown side by side instead.
  const DIFF_MAX_CELLS = 2000000;  // about 0.25 s of diffing; 1,400 words against 1,400
  const FILTER_KEYS = ["mode", "status", "score_stage", "min_score", "max_score", "unscored", "failed", "source",
    "split", "decision", "q", "sort", "order", "page"];
  const SORTS = ["id", "score", "rounds", "tokens", "mode", "status"];

  const state = {
    token: metaContent("spri-token"),
    readOnly: metaContent("spri-read-only") === "true",
    exported: null,          // the embedded data (export mode), else null
    overview: null,          // the overview's one request (a promise): modes, statuses, path, read_only
    list: null,              // the last list fetched: {query, items, total, page, pageSize}
    selected: -1,            // the list page's j/k selection
    record: null,            // the record page's {id, data, context}: context = the list it was opened from
    renderSeq: 0,            // bumps on every route; an answer for an older route is dropped
    searchTimer: null,
    showDiffs: true,
  };

  // ---------- DOM helpers (text only) ----------

  const SAFE_ATTRIBUTES = new Set(["id", "class", "href", "type", "title", "for", "name", "placeholder", "min",
    "max", "step", "value", "src", "alt", "role", "colspan", "loading", "hidden", "lang", "dir", "aria-label",
    "aria-current"]);

  /** An element; `attrs` by fixed names only (data-* too; an id is also the data-testid unless `testid` names
   *  another); string children become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "testid") el.setAttribute("data-testid", String(value));
      else if (name.startsWith("data-") || SAFE_ATTRIBUTES.has(name)) {
        el.setAttribute(name, value === true ? "" : String(value));
      } else throw new Error("attribute not allowed: " + name);
    }
    if (attrs && attrs.id && !attrs.testid) el.setAttribute("data-testid", String(attrs.id));
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      el.setAttribute(name === "testid" ? "data-testid" : name, String(value));
    }
    return append(el, children);
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function metaContent(name) {
    const el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") || "" : "";
  }

  function say(text, isError) {
    const box = document.getElementById("status-message");
    box.textContent = text || "";
    box.hidden = !text;
    box.classList.toggle("error", Boolean(isError));
  }

  const fmt = {
    int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
    num: (n, digits = 1) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US", {
      maximumFractionDigits: digits, minimumFractionDigits: 0 })),
    pct: (f) => (f === null || f === undefined ? "–" : (100 * f).toFixed(1) + "%"),
    score: (s) => (s === null || s === undefined ? "–" : String(s)),
  };

  function statusBadge(status, testid) {
    return h("span", { class: "badge status-" + String(status).replace(/[^a-z_-]/gi, ""), testid }, String(status));
  }

  // ---------- routing ----------

  function parseRoute() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const cut = raw.indexOf("?");
    const path = cut < 0 ? raw : raw.slice(0, cut);
    const params = new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1));
    if (path === "/" || path === "") return { view: "overview", params };
    if (path === "/records") return { view: "records", params };
    if (path.startsWith("/record/")) {
      let id = path.slice("/record/".length);
      try { id = decodeURIComponent(id); } catch (e) { /* a hand-typed id with a stray % stays as typed */ }
      return { view: "record", id, params };
    }
    return { view: "unknown", params };
  }

  /** The list's filters from URL params: only known keys with a value, page dropped when 1. */
  function listQuery(params) {
    const out = new URLSearchParams();
    for (const key of FILTER_KEYS) {
      const value = params.get(key);
      if (value !== null && value !== "" && !(key === "page" && value === "1")) out.set(key, value);
    }
    return out;
  }

  function recordsHref(query) {
    const text = query.toString();
    return "#/records" + (text ? "?" + text : "");
  }

  function recordHref(id, query) {
    const text = query ? query.toString() : "";
    return "#/record/" + encodeURIComponent(id) + (text ? "?" + text : "");
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function setNavCurrent(view) {
    document.getElementById("nav-overview").classList.toggle("current", view === "overview");
    document.getElementById("nav-records").classList.toggle("current", view === "records" || view === "record");
  }

  async function route() {
    const current = parseRoute();
    const seq = ++state.renderSeq;
    setNavCurrent(current.view);
    say("");
    try {
      if (current.view === "overview") await showOverview(seq);
      else if (current.view === "records") await showRecords(current.params, seq);
      else if (current.view === "record") await showRecord(current.id, current.params, seq);
      else {
        const view = clear(document.getElementById("view"));
        view.appendChild(h("p", { testid: "not-found" }, "No such page. ", h("a", { href: "#/" }, "Overview")));
      }
    } catch (err) {
      if (seq === state.renderSeq && err.name !== "AbortError") say(String(err.message || err), true);
    }
  }

  // ---------- data: the server's API, or the embedded export ----------

  let inflightList = null;

  const NO_SERVER = "the viewer's server does not answer: is `spri-sft view` still running?";

  /** fetch, with a refused connection said in words (fetch itself says only "Failed to fetch"). */
  async function request(url, options) {
    try {
      return await fetch(url, Object.assign({ credentials: "same-origin" }, options));
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error(NO_SERVER);
    }
  }

  async function fetchJSON(url, signal) {
    const res = await request(url, { headers: { Accept: "application/json" }, signal });
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) throw new Error((body && body.error) || res.status + " " + res.statusText + " from " + url);
    return body;
  }

  const api = {
    overview(fresh) {
      // One request shared by everything that needs it (the header, the list's filter options); asked again
      // (`fresh`) when the overview itself is shown, as its decision counts change while one reviews.
      if (!state.overview || (fresh && !state.exported)) {
        state.overview = state.exported ? Promise.resolve(state.exported.overview)
          : fetchJSON("api/overview").then((overview) => {
            if (overview.read_only) state.readOnly = true;
            return overview;
          });
        state.overview.catch(() => { state.overview = null; });  // a failed load is asked again on the next view
      }
      return state.overview;
    },
    async records(query) {
      const q = new URLSearchParams(query);
      q.set("page_size", String(PAGE_SIZE));
      if (state.exported) return exportedRecords(q);
      // A newer list request (the next keystroke's search) cancels the one still running.
      if (inflightList) inflightList.abort();
      inflightList = new AbortController();
      return fetchJSON("api/records?" + q.toString(), inflightList.signal);
    },
    async record(id) {
      if (state.exported) return exportedRecord(id);
      return fetchJSON("api/record/" + encodeURIComponent(id));
    },
    async decide(id, decision, reason) {
      const res = await request("api/decisions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-SPRI-Token": state.token },
        body: JSON.stringify({ id, decision, reason: reason || null }),
      });
      let body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      if (!res.ok) throw new Error((body && body.error) || "decision not saved: " + res.status + " " + res.statusText);
      return body.decision;
    },
  };

  // What the server's index holds per record, computed from a full record (export mode).

  /** A stage's last round (its final version), or null; as the server's index reads it (review/index.py). */
  function lastRound(rounds, stage) {
    let last = null;
    for (const r of rounds) if (r && r.stage === stage) last = r;
    return last;
  }

  /** The score of a stage's final version: null when it was not critiqued (a self-refine record's kept
   *  refinement) or the critique had no score. */
  function finalScore(rounds, stage) {
    const last = lastRound(rounds, stage);
    return last && Number.isInteger(last.score) ? last.score : null;
  }

  function roundNumber(rounds, stage) {
    const last = lastRound(rounds, stage);
    return last ? last.round : null;
  }

  function present(value) {
    return value !== null && value !== undefined;
  }

  function summarize(record) {
    const rounds = record.rounds || [];
    let tokens = 0;
    for (const use of Object.values(record.usage || {})) {
      tokens += (use.prompt_tokens || 0) + (use.completion_tokens || 0);
    }
    return {
      id: record.id,
      mode: record.mode,
      status: record.status,
      prompt: String(record.prompt || "").slice(0, 300),
      principles_score: finalScore(rounds, "principles"),
      response_score: finalScore(rounds, "response"),
      principles_rounds: roundNumber(rounds, "principles"),
      response_rounds: roundNumber(rounds, "response"),
      // A critique with no score in it; a round with no critique at all was not critiqued.
      unscored: rounds.some((r) => present(r.critique) && !present(r.score)),
      failed: record.status === "failed",
      prompt_source: record.prompt_source || null,
      sft_split: record.sft_split || null,
      source_id: record.source_id === undefined ? null : record.source_id,
      tokens,
      decision: null,
    };
  }

  function exportedDecision(id) {
    const decisions = state.exported.decisions || {};
    return decisions[id] || null;
  }

  function exportedRecords(q) {
    const rows = state.exported.rows;
    const stage = q.get("score_stage") === "principles" ? "principles" : "response";
    const scoreOf = (row) => row[stage + "_score"];
    const bound = (name) => {
      if (!q.get(name)) return null;
      if (!/^-?\d+$/.test(q.get(name).trim())) {
        throw new Error(name + " must be a whole number (got " + q.get(name) + ")");
      }
      return Number(q.get(name));
    };
    const min = bound("min_score"), max = bound("max_score");
    const needle = (q.get("q") || "").toLowerCase();
    const decision = q.get("decision");
    let items = rows.filter((row) => {
      if (q.get("mode") && row.mode !== q.get("mode")) return false;
      if (q.get("status") && row.status !== q.get("status")) return false;
      if (min !== null && !(scoreOf(row) !== null && scoreOf(row) >= min)) return false;
      if (max !== null && !(scoreOf(row) !== null && scoreOf(row) <= max)) return false;
      if (q.get("unscored") === "1" && !row.unscored) return false;
      if (q.get("failed") === "1" && !row.failed) return false;
      if (q.get("source") && row.prompt_source !== q.get("source")) return false;
      if (q.get("split") && row.sft_split !== q.get("split")) return false;
      if (decision) {
        const made = row.decision ? row.decision.decision || row.decision : null;
        if (decision === "none" ? made !== null : made !== decision) return false;
      }
      if (needle && !row.searchText.includes(needle)) return false;
      return true;
    });
    const sort = SORTS.includes(q.get("sort")) ? q.get("sort") : "id";
    const key = {
      id: (r) => r.id, mode: (r) => r.mode, status: (r) => r.status, tokens: (r) => r.tokens,
      score: scoreOf, rounds: (r) => (r.principles_rounds || 0) + (r.response_rounds || 0),
    }[sort];
    const sign = q.get("order") === "desc" ? -1 : 1;
    items = items.slice().sort((a, b) => {
      const ka = key(a), kb = key(b);
      if (ka === null && kb !== null) return 1;  // no value sorts last either way, as the server's index does
      if (kb === null && ka !== null) return -1;
      if (ka !== kb) return (ka < kb ? -1 : 1) * sign;
      return (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) * sign;
    });
    const page = Math.max(1, parseInt(q.get("page") || "1", 10) || 1);
    const start = (page - 1) * PAGE_SIZE;
    const pageItems = items.slice(start, start + PAGE_SIZE).map((row) => {
      const item = Object.assign({}, row);
      delete item.searchText;
      item.decision = row.decision ? row.decision.decision : null;
      return item;
    });
    return { total: items.length, page, page_size: PAGE_SIZE, items: pageItems };
  }

  function exportedRecord(id) {
    const record = state.exported.byId.get(id);
    if (!record) throw new Error("record " + id + " is not in this export");
    const same = state.exported.records
      .filter((other) => other.id !== id && other.prompt === record.prompt)
      .map((other) => ({ mode: other.mode, record: other }));
    return { record, decision: exportedDecision(id), same_prompt: same };
  }

  function loadExport() {
    const el = document.getElementById("spri-data");
    if (!el) return null;
    const data = JSON.parse(el.textContent);
    const records = data.records || [];
    const byId = new Map(records.map((r) => [r.id, r]));
    const decisions = data.decisions || {};
    const rows = records.map((record) => {
      const row = summarize(record);
      row.decision = decisions[record.id] || null;
      row.searchText = (String(record.prompt || "") + "\n" + String(record.response || "")).toLowerCase();
      return row;
    });
    return { overview: data.overview || { modes: {} }, records, byId, rows, decisions, sample: data.sample || null };
  }

  // ---------- charts (inline SVG, no library) ----------

  /** Keys in score/round order: numbers ascending, then anything else ("null", "unscored") as given. */
  function orderedKeys(counts) {
    const keys = Object.keys(counts || {});
    const numeric = keys.filter((k) => k !== "" && !isNaN(Number(k))).sort((a, b) => Number(a) - Number(b));
    return numeric.concat(keys.filter((k) => !numeric.includes(k)));
  }

  /** A small bar chart of {key: count}: one bar per key, its count above, its key below. */
  function barChart(counts, testid, title) {
    const keys = orderedKeys(counts);
    const barWidth = 22, gap = 6, height = 64, top = 14, bottom = 16;
    const width = Math.max(keys.length, 1) * (barWidth + gap) + gap;
    const most = Math.max(1, ...keys.map((k) => Number(counts[k]) || 0));
    const chart = svg("svg", { class: "chart", width, height: height + top + bottom, role: "img",
      viewBox: "0 0 " + width + " " + (height + top + bottom), testid });
    chart.appendChild(svg("title", {}, title));
    keys.forEach((key, i) => {
      const count = Number(counts[key]) || 0;
      const barHeight = count ? Math.max(1, Math.round((height * count) / most)) : 0;
      const x = gap + i * (barWidth + gap);
      const bar = svg("g", { testid: "bar", "data-key": key, "data-count": count });
      bar.appendChild(svg("title", {}, title + " " + key + ": " + count));
      const y = top + height - barHeight;
      bar.appendChild(svg("rect", { x, y, width: barWidth, height: barHeight, class: "bar" }));
      bar.appendChild(svg("text", { x: x + barWidth / 2, y: y - 3, class: "bar-count", "text-anchor": "middle" },
        fmt.int(count)));
      bar.appendChild(svg("text", { x: x + barWidth / 2, y: top + height + 12, class: "bar-key",
        "text-anchor": "middle" }, key));
      chart.appendChild(bar);
    });
    return chart;
  }

  /** A critic's digit distribution {digit: p} as a tiny bar row. */
  function distributionChart(distribution) {
    const keys = orderedKeys(distribution);
    const barWidth = 10, gap = 3, height = 22;
    const width = keys.length * (barWidth + gap) + gap;
    const chart = svg("svg", { class: "dist", width, height: height + 11, testid: "score-distribution", role: "img",
      viewBox: "0 0 " + width + " " + (height + 11) });
    chart.appendChild(svg("title", {}, "the critic's score distribution"));
    keys.forEach((key, i) => {
      const p = Number(distribution[key]) || 0;
      const barHeight = Math.round(height * Math.min(1, Math.max(0, p)));
      const x = gap + i * (barWidth + gap);
      const bar = svg("g", { testid: "bar", "data-key": key, "data-count": p });
      bar.appendChild(svg("title", {}, key + ": " + (100 * p).toFixed(1) + "%"));
      bar.appendChild(svg("rect", { x, y: height - barHeight, width: barWidth, height: barHeight, class: "bar" }));
      bar.appendChild(svg("text", { x: x + barWidth / 2, y: height + 10, class: "bar-key", "text-anchor": "middle" },
        key));
      chart.appendChild(bar);
    });
    return chart;
  }

  // ---------- overview ----------

  function roleTable(perRecord, testid, digits) {
    const roles = Object.keys(perRecord || {});
    if (!roles.length) return h("p", { class: "muted", testid }, "none");
    return h("table", { class: "mini", testid },
      h("tbody", {}, roles.map((role) => h("tr", {},
        h("th", {}, role), h("td", { class: "num" }, fmt.num(perRecord[role], digits))))));
  }

  const NO_VALUE_KEYS = new Set(["None", "null", ""]);

  /** A histogram block; the count under a no-value key (a final version with no score) is said in words. */
  function chartBlock(label, counts, testid) {
    const shown = {};
    let without = 0;
    for (const [key, count] of Object.entries(counts || {})) {
      if (NO_VALUE_KEYS.has(key)) without += Number(count) || 0;
      else shown[key] = count;
    }
    return h("div", { class: "chart-block" },
      h("div", { class: "chart-label" }, label),
      Object.keys(shown).length ? barChart(shown, testid, label) : h("p", { class: "muted", testid }, "none"),
      without
        ? h("div", { class: "muted small", testid: testid + "-none" }, fmt.int(without) + " without a score")
        : null);
  }

  function modeCard(mode, m) {
    const statuses = orderedKeys(m.status || {});
    const rounds = m.rounds || {};
    const finals = m.final_score || {};
    return h("section", { class: "card mode-card", testid: "mode-card", "data-mode": mode },
      h("h2", {}, h("a", { href: recordsHref(new URLSearchParams({ mode })) }, mode),
        " ", h("span", { class: "muted" }, h("span", { testid: "mode-records" }, fmt.int(m.records)), " records")),
      h("div", { class: "stats" },
        h("table", { class: "mini" }, h("tbody", {}, statuses.map((status) => h("tr",
          { testid: "status-count", "data-status": status },
          h("th", {}, h("a", { href: recordsHref(new URLSearchParams({ mode, status })) }, statusBadge(status))),
          h("td", { class: "num" }, fmt.int(m.status[status])))))),
        h("dl", { class: "shares" },
          h("dt", {}, "accepted"), h("dd", { testid: "accepted-share" }, fmt.pct(m.accepted_share)),
          h("dt", {}, "failed"), h("dd", { testid: "failed-share" }, fmt.pct(m.failed_share)),
          h("dt", {}, "unscored"),
          // No critic judged this mode's records (direct, oracle, ...): it has no scores to lack.
          m.critic === false
            ? h("dd", { testid: "unscored-share", title: "no critic" }, "–")
            : h("dd", { testid: "unscored-share" }, fmt.pct(m.unscored_share)))),
      h("div", { class: "charts" },
        rounds.principles && Object.keys(rounds.principles).length
          ? chartBlock("principles rounds", rounds.principles, "chart-rounds-principles") : null,
        chartBlock("response rounds", rounds.response, "chart-rounds-response"),
        m.critic === false
          ? h("div", { class: "chart-block" }, h("div", { class: "chart-label" }, "final score"),
            h("p", { class: "muted", testid: "no-critic" }, "no critic"))
          : [finals.principles && Object.keys(finals.principles).length
            ? chartBlock("principles final score", finals.principles, "chart-final-score-principles") : null,
          chartBlock("response final score", finals.response, "chart-final-score-response")]),
      h("div", { class: "per-record" },
        h("div", {}, h("div", { class: "chart-label" }, "calls per record"),
          roleTable(m.calls_per_record, "calls-per-record", 2)),
        h("div", {}, h("div", { class: "chart-label" }, "tokens per record"),
          roleTable(m.tokens_per_record, "tokens-per-record", 0))));
  }

  async function showOverview(seq) {
    const overview = await api.overview(true);
    if (seq !== state.renderSeq) return;
    const view = clear(document.getElementById("view"));
    const root = h("div", { testid: "overview-view" });
    const modes = overview.modes || {};
    const decisions = overview.decisions || {};
    root.appendChild(h("div", { class: "summary-line" },
      h("span", {}, fmt.int(Object.keys(modes).length), " modes"),
      h("span", { id: "decision-counts" },
        "decisions: ", fmt.int(decisions.exclude || 0), " excluded, ", fmt.int(decisions.keep || 0), " kept"),
      h("a", { href: "#/records" }, "all records →")));
    const grid = h("div", { class: "mode-grid" });
    for (const mode of Object.keys(modes)) grid.appendChild(modeCard(mode, modes[mode]));
    if (!Object.keys(modes).length) grid.appendChild(h("p", { class: "muted" }, "No records."));
    root.appendChild(grid);
    const figures = state.exported ? [] : overview.figures || [];
    if (figures.length) {
      root.appendChild(h("h2", {}, "Report figures"));
      root.appendChild(h("div", { class: "figures" }, figures.map((name) => h("figure", {},
        h("img", { src: "figures/" + encodeURIComponent(name), alt: name, loading: "lazy", testid: "figure",
          "data-name": name }),
        h("figcaption", {}, name)))));
    }
    view.appendChild(root);
  }

  // ---------- record list ----------

  function option(value, label) {
    return h("option", { value }, label === undefined ? value : label);
  }

  function field(label, control) {
    return h("label", { class: "field" }, h("span", {}, label), control);
  }

  function buildListForm(overview) {
    const modes = Object.keys(overview.modes || {});
    const statuses = new Set();
    for (const m of Object.values(overview.modes || {})) for (const s of Object.keys(m.status || {})) statuses.add(s);
    const select = (id, options) => h("select", { id }, options);
    const form = h("form", { class: "filters", id: "filters", role: "search" },
      field("search", h("input", { id: "search", type: "search", placeholder: "prompt or response text" })),
      field("mode", select("filter-mode", [option("", "any"), modes.map((m) => option(m))])),
      field("status", select("filter-status", [option("", "any"), [...statuses].sort().map((s) => option(s))])),
      field("score of", select("filter-score-stage", [option("", "response"), option("principles")])),
      field("min", h("input", { id: "filter-min-score", type: "number", min: 1, max: 5, step: 1, class: "narrow" })),
      field("max", h("input", { id: "filter-max-score", type: "number", min: 1, max: 5, step: 1, class: "narrow" })),
      h("label", { class: "check" }, h("input", { id: "filter-unscored", type: "checkbox" }), "unscored"),
      h("label", { class: "check" }, h("input", { id: "filter-failed", type: "checkbox" }), "failed"),
      field("source", h("input", { id: "filter-source", type: "text", class: "medium", placeholder: "prompt source" })),
      field("split", select("filter-split", [option("", "any"), option("train"), option("validation"),
        option("auto")])),
      field("decision", select("filter-decision", [option("", "any"), option("exclude", "excluded"),
        option("keep", "kept"), option("none", "none")])),
      field("sort", select("sort", SORTS.map((s) => option(s)))),
      field("order", select("order", [option("asc", "ascending"), option("desc", "descending")])),
      h("button", { type: "button", id: "filters-reset", class: "link-button" }, "reset"));
    form.addEventListener("submit", (event) => event.preventDefault());
    return form;
  }

  // Each control and the URL key it writes.
  const CONTROLS = [["filter-mode", "mode"], ["filter-status", "status"], ["filter-score-stage", "score_stage"],
    ["filter-min-score", "min_score"], ["filter-max-score", "max_score"], ["filter-unscored", "unscored"],
    ["filter-failed", "failed"], ["filter-source", "source"], ["filter-split", "split"],
    ["filter-decision", "decision"], ["search", "q"], ["sort", "sort"], ["order", "order"]];

  function formQuery() {
    const query = new URLSearchParams();
    for (const [id, key] of CONTROLS) {
      const el = document.getElementById(id);
      const value = el.type === "checkbox" ? (el.checked ? "1" : "") : el.value.trim();
      const isDefault = (key === "sort" && value === "id") || (key === "order" && value === "asc");
      if (value !== "" && !isDefault) query.set(key, value);
    }
    return query;
  }

  function syncForm(query) {
    for (const [id, key] of CONTROLS) {
      const el = document.getElementById(id);
      // A box being typed in keeps its text and cursor (the URL was made from it anyway).
      if (el === document.activeElement && el.type !== "checkbox" && el.tagName !== "SELECT") continue;
      const value = query.get(key) || (key === "sort" ? "id" : key === "order" ? "asc" : "");
      if (el.type === "checkbox") el.checked = value === "1";
      else if (el.tagName === "SELECT" && value && ![...el.options].some((o) => o.value === value)) {
        el.appendChild(option(value));  // a value from the URL the overview did not list
        el.value = value;
      } else if (el.value !== value) el.value = value;
    }
  }

  function wireListForm(form) {
    const apply = () => go(recordsHref(listQuery(formQuery())));
    for (const [id] of CONTROLS) {
      const el = document.getElementById(id);
      if (id === "search" || id === "filter-source") {
        el.addEventListener("input", () => {
          clearTimeout(state.searchTimer);
          state.searchTimer = setTimeout(apply, SEARCH_DEBOUNCE_MS);
        });
        el.addEventListener("keydown", (event) => {
          if (event.key === "Enter") { clearTimeout(state.searchTimer); apply(); }
        });
      } else {
        el.addEventListener("change", apply);
      }
    }
    form.querySelector("#filters-reset").addEventListener("click", () => go("#/records"));
  }

  function pageLink(id, label, page, query, enabled) {
    const target = new URLSearchParams(query);
    target.set("page", String(page));
    const button = h("button", { type: "button", id, class: "pager" }, label);
    button.disabled = !enabled;
    button.addEventListener("click", () => go(recordsHref(listQuery(target))));
    return button;
  }

  function decisionBadge(decision) {
    if (!decision) return "";
    const excluded = decision === "exclude";
    return h("span", { class: "badge decision-" + (excluded ? "exclude" : "keep") }, excluded ? "excluded" : "kept");
  }

  function recordsTable(result, query) {
    const context = listQuery(query);
    const table = h("table", { id: "records-table", class: "records" },
      h("thead", {}, h("tr", {}, ["id", "mode", "status", "P score", "R score", "rounds P/R", "tokens", "flags",
        "source / split", "decision", "prompt"].map((label) => h("th", {}, label)))));
    const body = h("tbody", {});
    result.items.forEach((item, index) => {
      const href = recordHref(item.id, context);
      const flags = [item.failed ? "failed" : null, item.unscored ? "unscored" : null].filter(Boolean).join(" ");
      const origin = [item.prompt_source, item.sft_split].filter(Boolean).join(" / ");
      const row = h("tr", { testid: "record-row", "data-id": item.id, "data-index": index },
        h("td", { class: "mono" }, h("a", { href, testid: "record-link" }, item.id)),
        h("td", {}, item.mode),
        h("td", {}, statusBadge(item.status)),
        h("td", { class: "num" }, fmt.score(item.principles_score)),
        h("td", { class: "num" }, fmt.score(item.response_score)),
        h("td", { class: "num" }, fmt.int(item.principles_rounds) + "/" + fmt.int(item.response_rounds)),
        h("td", { class: "num" }, fmt.int(item.tokens)),
        h("td", { class: "flags" }, flags),
        h("td", { class: "muted" }, origin),
        h("td", {}, decisionBadge(item.decision)),
        h("td", { class: "prompt-cell", title: item.prompt }, item.prompt));
      row.addEventListener("click", (event) => {
        if (event.target.closest("a")) return;  // the link navigates by itself
        go(href);
      });
      body.appendChild(row);
    });
    table.appendChild(body);
    return table;
  }

  async function showRecords(params, seq) {
    const query = listQuery(params);
    const answer = api.records(query);  // asked at once, beside the overview (the filters' options) on a first visit
    answer.catch(() => {});  // reported below, when awaited
    const overview = await api.overview();
    if (seq !== state.renderSeq) return;
    const view = document.getElementById("view");
    let root = view.querySelector('[data-testid="records-view"]');
    if (!root) {  // first visit: build the form once, so typing in the search box is never interrupted
      clear(view);
      const form = buildListForm(overview);
      root = h("div", { testid: "records-view" }, form,
        h("div", { class: "list-bar" },
          h("span", {}, h("b", { id: "records-total" }, "…"), " records"),
          h("span", { class: "pagers", id: "pagers" }),
          h("span", { id: "page-info", class: "muted" })),
        h("div", { id: "records-body", class: "table-wrap" }));
      view.appendChild(root);
      wireListForm(form);
    }
    syncForm(query);
    root.classList.add("loading");
    let result;
    try {
      result = await answer;
    } finally {
      if (seq === state.renderSeq) root.classList.remove("loading");
    }
    if (seq !== state.renderSeq) return;
    const page = result.page || 1;
    const pages = Math.max(1, Math.ceil(result.total / (result.page_size || PAGE_SIZE)));
    state.list = { query: query.toString(), items: result.items.map((i) => i.id), total: result.total, page,
      pageSize: result.page_size || PAGE_SIZE };
    state.selected = -1;
    document.getElementById("records-total").textContent = fmt.int(result.total);
    document.getElementById("page-info").textContent = "page " + fmt.int(page) + " of " + fmt.int(pages);
    append(clear(document.getElementById("pagers")), [
      pageLink("page-first", "« first", 1, query, page > 1),
      pageLink("page-prev", "‹ prev", page - 1, query, page > 1),
      pageLink("page-next", "next ›", page + 1, query, page < pages),
      pageLink("page-last", "last »", pages, query, page < pages)]);
    const body = clear(document.getElementById("records-body"));
    if (!result.items.length) body.appendChild(h("p", { id: "records-empty", class: "muted" },
      "No record matches these filters."));
    else body.appendChild(recordsTable(result, query));
  }

  function selectRow(step) {
    const rows = document.querySelectorAll('[data-testid="record-row"]');
    if (!rows.length) return;
    state.selected = Math.max(0, Math.min(rows.length - 1, state.selected + step));
    rows.forEach((row, i) => row.classList.toggle("selected", i === state.selected));
    rows[state.selected].scrollIntoView({ block: "nearest" });
  }

  // ---------- word diff ----------

  /** Words with the whitespace before each: [{word, space}]; the text's trailing whitespace is dropped. */
  function words(text) {
    const out = [];
    const re = /(\s*)(\S+)/g;
    let m;
    while ((m = re.exec(text)) !== null) out.push({ space: m[1], word: m[2] });
    return out;
  }

  /**
   * The word-level edit script from `before` to `after`: [{op: "same"|"del"|"ins", tokens}], or null when the
   * texts are too long to diff. A longest common subsequence over words, after trimming the common start and end.
   */
  function wordDiff(before, after) {
    const a = words(before), b = words(after);
    let start = 0;
    while (start < a.length && start < b.length && a[start].word === b[start].word) start++;
    let endA = a.length, endB = b.length;
    while (endA > start && endB > start && a[endA - 1].word === b[endB - 1].word) { endA--; endB--; }
    const n = endA - start, m = endB - start;
    if (n * m > DIFF_MAX_CELLS) return null;
    // lcs[i][j] = LCS length of a[start+i..endA) and b[start+j..endB), in one flat array.
    const width = m + 1;
    const lcs = new Uint32Array((n + 1) * width);
    for (let i = n - 1; i >= 0; i--) {
      const wa = a[start + i].word;
      for (let j = m - 1; j >= 0; j--) {
        lcs[i * width + j] = wa === b[start + j].word
          ? lcs[(i + 1) * width + j + 1] + 1
          : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
      }
    }
    const ops = [];
    const push = (op, token) => {
      const last = ops[ops.length - 1];
      if (last && last.op === op) last.tokens.push(token);
      else ops.push({ op, tokens: [token] });
    };
    for (let k = 0; k < start; k++) push("same", b[k]);
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && a[start + i].word === b[start + j].word) { push("same", b[start + j]); i++; j++; }
      // A deletion before an insertion where either keeps the LCS: a replaced word reads "old new".
      else if (i < n && (j === m || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1])) push("del", a[start + i++]);
      else push("ins", b[start + j++]);
    }
    for (let k = endB; k < b.length; k++) push("same", b[k]);
    return ops;
  }

  function textBlock(text, testid) {
    return h("div", { class: "text", testid }, text === null || text === undefined ? "" : String(text));
  }

  /** `after` with its changes from `before` marked; both texts side by side when too long to diff. */
  function diffBlock(before, after) {
    const ops = wordDiff(String(before || ""), String(after || ""));
    if (ops === null) {
      return h("div", { class: "diff-fallback", testid: "version-text" },
        h("p", { class: "muted", testid: "diff-too-long" },
          "Too long to diff word by word: the two versions side by side."),
        h("div", { class: "two-columns" }, textBlock(before, "diff-before"), textBlock(after, "diff-after")));
    }
    const block = h("div", { class: "text diff", testid: "version-text" });
    for (const { op, tokens } of ops) {
      const first = block.childNodes.length === 0;  // the text's own leading whitespace is not shown
      const text = tokens.map((t, index) => (index === 0 && first ? "" : t.space) + t.word).join("");
      if (op === "same") block.appendChild(document.createTextNode(text));
      else {
        // The run's leading whitespace stays outside the mark, so a marked run starts on its first word.
        const lead = text.match(/^\s*/)[0];
        if (lead) block.appendChild(document.createTextNode(lead));
        block.appendChild(h(op, { class: "diff-" + op }, text.slice(lead.length)));
      }
    }
    return block;
  }

  // ---------- record page ----------

  function critiqueBlock(round) {
    const critiqued = round.critique !== null && round.critique !== undefined;
    if (!critiqued && (round.score === null || round.score === undefined)) return null;
    const unscored = round.score === null || round.score === undefined;
    return h("div", { class: "critique-box" },
      h("div", { class: "critique-head" },
        h("span", { class: "score " + (unscored ? "unscored" : "score-" + String(round.score).replace(/\W/g, "")),
          testid: "score" }, unscored ? "unscored" : String(round.score)),
        round.score_distribution ? distributionChart(round.score_distribution) : null,
        round.score_mean !== undefined && round.score_mean !== null
          ? h("span", { class: "muted", testid: "score-mean" }, "mean " + fmt.num(round.score_mean, 2)) : null,
        round.score_mode ? h("span", { class: "muted" }, "scored by " + round.score_mode) : null,
        h("span", { class: "muted" }, "critic feedback")),
      critiqued ? h("div", { class: "text critique", testid: "critique" }, String(round.critique)) : null);
  }

  function versionLabel(index, count, isFinal) {
    if (isFinal && count > 1) return "final";
    if (index === 0) return count > 1 ? "draft" : "version";
    return "revision " + index;
  }

  /** A round's text: with its changes from the previous version marked (when diffs are on), or one word when the
   *  revision repeats that version word for word (a diff with no marks would read as a copy shown twice). */
  function versionBlock(index, count, previous, text) {
    if (index === 0 || text === null) return textBlock(text, "version-text");
    if (text === previous) {
      return h("p", { class: "muted unchanged", testid: "version-unchanged" },
        "unchanged: the same text as the " + versionLabel(index - 1, count, false));
    }
    return state.showDiffs ? diffBlock(previous, text) : textBlock(text, "version-text");
  }

  function roundsSection(record, stage, finalText) {
    const rounds = (record.rounds || []).filter((r) => r.stage === stage);
    if (!rounds.length) return null;
    const list = h("div", { id: stage + "-rounds", testid: stage + "-rounds", class: "rounds" });
    rounds.forEach((round, index) => {
      const text = round.text === undefined ? null : round.text;
      const isFinal = index === rounds.length - 1 && text === finalText;
      const previous = index > 0 ? rounds[index - 1].text : null;
      list.appendChild(h("article", { class: "round" + (isFinal ? " final" : ""), testid: stage + "-round",
        "data-round": round.round },
        h("div", { class: "round-head" },
          h("b", {}, versionLabel(index, rounds.length, isFinal)),
          h("span", { class: "muted" }, "round " + round.round),
          round.finish_reason && round.finish_reason !== "stop"
            ? h("span", { class: "badge warn", title: "finish_reason" }, round.finish_reason) : null),
        versionBlock(index, rounds.length, previous, text),
        critiqueBlock(round)));
    });
    const last = rounds[rounds.length - 1].text;
    if (finalText !== null && finalText !== undefined && finalText !== last) {
      list.appendChild(h("article", { class: "round final", testid: stage + "-round", "data-round": "final" },
        h("div", { class: "round-head" }, h("b", {}, "final")),
        state.showDiffs ? diffBlock(last, finalText) : textBlock(finalText, "version-text")));
    }
    return list;
  }

  /** A record's usage: the model calls that completed, per role (generate counts no call that failed). */
  function usageTable(record) {
    const usage = record.usage || {};
    const failed = record.status === "failed";
    const roles = Object.keys(usage);
    if (!roles.length) {
      return h("p", { class: "muted", id: "usage-table" }, failed
        ? "No completed model call: the call that failed (the error above) is not counted."
        : "No model calls.");
    }
    // Replayed calls were read back from the journal of an interrupted run; most runs have none.
    const replayed = roles.some((role) => Number((usage[role] || {}).replayed_calls) > 0);
    const total = { calls: 0, prompt_tokens: 0, completion_tokens: 0 };
    const rows = roles.map((role) => {
      const use = usage[role] || {};
      for (const key of Object.keys(total)) total[key] += Number(use[key]) || 0;
      return h("tr", { testid: "usage-row", "data-role": role },
        h("th", {}, role), h("td", {}, use.model || ""), h("td", { class: "num" }, fmt.int(use.calls)),
        h("td", { class: "num" }, fmt.int(use.prompt_tokens)),
        h("td", { class: "num" }, fmt.int(use.completion_tokens)),
        replayed ? h("td", { class: "num" }, use.replayed_calls ? fmt.int(use.replayed_calls) : "") : null);
    });
    const headings = ["role", "model", "calls", "prompt tokens", "completion tokens"]
      .concat(replayed ? ["replayed"] : []);
    const table = h("table", { class: "mini usage", id: "usage-table" },
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
      h("tbody", {}, rows),
      roles.length > 1 ? h("tfoot", {}, h("tr", {}, h("th", {}, "total"), h("td", {}),
        ["calls", "prompt_tokens", "completion_tokens"].map((key) => h("td", { class: "num" }, fmt.int(total[key]))),
        replayed ? h("td", {}) : null)) : null);
    if (!failed) return table;
    return [table, h("p", { class: "muted small", testid: "usage-failed-note" },
      "The calls completed before the error above; the call that failed is not counted.")];
  }

  function samePromptSection(record, samePrompt, context) {
    const columns = [{ mode: record.mode, record, current: true }]
      .concat((samePrompt || []).map((s) => ({ mode: s.mode, record: s.record, current: false })));
    const grid = h("div", { id: "same-prompt", class: "same-prompt" });
    for (const column of columns) {
      const other = column.record || {};
      const score = finalScore(other.rounds || [], "response");
      grid.appendChild(h("section", { class: "column" + (column.current ? " current" : ""),
        testid: "same-prompt-column", "data-mode": column.mode, "data-id": other.id },
        h("div", { class: "column-head" },
          column.current ? h("b", {}, column.mode) : h("a", { href: recordHref(other.id, context) }, column.mode),
          h("span", { testid: "same-prompt-status" }, statusBadge(other.status)),
          score !== null ? h("span", { class: "muted" }, "score " + score) : null,
          column.current ? h("span", { class: "muted" }, "(this record)") : null),
        other.status === "failed"
          ? h("div", { class: "text error-text", testid: "same-prompt-response" }, String(other.error || "failed"))
          : h("div", { class: "text", testid: "same-prompt-response" },
            present(other.response) ? String(other.response) : "")));
    }
    return grid;
  }

  function decisionText(decision) {
    if (!decision) return "none";
    if (decision.decision === "exclude") return decision.reason ? "excluded: " + decision.reason : "excluded";
    return "kept";
  }

  function decisionPanel(record, decision) {
    if (state.exported || state.readOnly) {
      return h("div", { id: "decisions-off", class: "muted" },
        "decision: ", h("span", { id: "decision-current" }, decisionText(decision)),
        " · decisions are off (", state.exported ? "exported file" : "read-only", ")");
    }
    const current = h("span", { id: "decision-current", class: "decision-current" }, decisionText(decision));
    const who = h("span", { class: "muted", id: "decision-who" });
    const reason = h("input", { id: "decision-reason", type: "text", placeholder: "reason (optional)",
      class: "wide" });
    if (decision && decision.reason) reason.value = decision.reason;
    const exclude = h("button", { type: "button", id: "decision-exclude", class: "danger" }, "Exclude");
    const keep = h("button", { type: "button", id: "decision-keep" }, "Keep");
    const panel = h("div", { id: "decision-panel", class: "decision-panel" },
      h("span", {}, "decision: "), current, who, reason, exclude, keep);
    const show = (made) => {
      current.textContent = decisionText(made);
      panel.classList.toggle("is-excluded", Boolean(made && made.decision === "exclude"));
      panel.classList.toggle("is-kept", Boolean(made && made.decision === "keep"));
      const by = made ? [made.who, made.when].filter(Boolean).join(", ") : "";
      who.textContent = by ? "(" + by + ")" : "";
    };
    show(decision);
    const decide = async (what) => {
      exclude.disabled = keep.disabled = true;
      try {
        const made = await api.decide(record.id, what, what === "exclude" ? reason.value.trim() : null);
        show(made);
        say("");
      } catch (err) {
        say(String(err.message || err), true);
      } finally {
        exclude.disabled = keep.disabled = false;
      }
    };
    exclude.addEventListener("click", () => decide("exclude"));
    keep.addEventListener("click", () => decide("keep"));
    reason.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); decide("exclude"); }
    });
    panel.decide = decide;
    return panel;
  }

  function section(title, ...children) {
    return h("section", { class: "card" }, h("h2", {}, title), children);
  }

  async function showRecord(id, params, seq) {
    const answer = api.record(id);
    answer.catch(() => {});  // reported below, when awaited
    await api.overview();  // it says whether the server is read-only
    const data = await answer;
    if (seq !== state.renderSeq) return;
    const record = data.record;
    const context = listQuery(params);
    state.record = { id, data, context };
    const view = clear(document.getElementById("view"));
    const root = h("div", { testid: "record-view", "data-id": record.id, class: "record" });
    const nav = h("div", { class: "record-nav" },
      h("a", { id: "back-to-list", href: recordsHref(context) }, "← list"),
      h("button", { type: "button", id: "record-prev", class: "pager" }, "‹ previous (k)"),
      h("button", { type: "button", id: "record-next", class: "pager" }, "next (j) ›"),
      h("label", { class: "check" }, h("input", { id: "toggle-diff", type: "checkbox" }), "show diffs"));
    nav.querySelector("#record-prev").addEventListener("click", () => stepRecord(-1));
    nav.querySelector("#record-next").addEventListener("click", () => stepRecord(1));
    const toggle = nav.querySelector("#toggle-diff");
    toggle.checked = state.showDiffs;
    toggle.addEventListener("change", () => { state.showDiffs = toggle.checked; route(); });
    root.appendChild(nav);

    const origin = [record.prompt_source && "source " + record.prompt_source,
      record.sft_split && "split " + record.sft_split,
      present(record.source_id) && "source id " + record.source_id].filter(Boolean).join(" · ");
    root.appendChild(h("div", { class: "record-head" },
      h("h1", {}, h("span", { id: "record-mode" }, record.mode), " ",
        h("span", { id: "record-status" }, statusBadge(record.status)), " ",
        h("span", { id: "record-id", class: "mono muted" }, record.id)),
      origin ? h("div", { class: "muted" }, origin) : null,
      decisionPanel(record, data.decision || null)));

    root.appendChild(section("Prompt", h("div", { id: "record-prompt", class: "text prompt" },
      String(record.prompt || ""))));
    if (record.status === "failed" || record.error) {
      root.appendChild(h("section", { class: "card error-card" }, h("h2", {}, "Error",
        record.error_kind ? h("span", { class: "muted" }, " (" + record.error_kind + ")") : null),
        h("div", { id: "record-error", class: "text error-text" }, String(record.error || "no error recorded"))));
    }
    const principles = roundsSection(record, "principles", record.principles);
    if (principles) root.appendChild(section("Principles", principles));
    else if (record.principles) {
      root.appendChild(section("Rules", h("details", { id: "fixed-rules" },
        h("summary", {}, "the fixed rules of mode " + record.mode + " (the same for every record)"),
        textBlock(record.principles, "fixed-rules-text"))));
    }
    const responses = roundsSection(record, "response", record.response);
    if (responses) {
      const versions = (record.rounds || []).filter((r) => r.stage === "response");
      const children = [responses];
      if (versions.length >= 3 && state.showDiffs) {
        children.unshift(h("details", { id: "draft-to-final", class: "round" },
          h("summary", {}, "draft → final in one diff"), diffBlock(versions[0].text, record.response)));
      }
      root.appendChild(section("Response", children));
    } else if (record.response) {
      root.appendChild(section("Response", textBlock(record.response, "version-text")));
    }
    root.appendChild(section("Usage", usageTable(record)));
    root.appendChild(section("The same prompt in every mode", samePromptSection(record, data.same_prompt, context)));
    view.appendChild(root);
    window.scrollTo(0, 0);
  }

  /** The ids of the list page `query` names (the cached one when it is that page). */
  async function listIds(query) {
    if (state.list && state.list.query === query.toString()) return state.list;
    const result = await api.records(query);
    state.list = { query: query.toString(), items: result.items.map((i) => i.id), total: result.total,
      page: result.page || 1, pageSize: result.page_size || PAGE_SIZE };
    return state.list;
  }

  /** Open the next (+1) or previous (-1) record of the list this record was opened from, across pages. */
  async function stepRecord(step) {
    if (!state.record) return;
    try {
      const query = new URLSearchParams(state.record.context);
      let list = await listIds(query);
      let index = list.items.indexOf(state.record.id) + step;
      if (index < 0 || index >= list.items.length) {
        const page = list.page + (index < 0 ? -1 : 1);
        if (page < 1 || (page - 1) * list.pageSize >= list.total) {
          say(index < 0 ? "This is the first record." : "This is the last record.");
          return;
        }
        query.set("page", String(page));
        list = await listIds(listQuery(query));
        index = step > 0 ? 0 : list.items.length - 1;
      }
      if (list.items[index] !== undefined) go(recordHref(list.items[index], listQuery(query)));
    } catch (err) {
      say(String(err.message || err), true);
    }
  }

  // ---------- keyboard ----------

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    const typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT"
      || target.isContentEditable);
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    const current = parseRoute();
    const key = event.key;
    if (key === "?") { toggleHelp(); return; }
    if (key === "g") { go("#/"); return; }
    if (key === "/") {
      event.preventDefault();
      if (current.view === "record") go(recordsHref(listQuery(current.params)));
      else if (current.view !== "records") go("#/records");
      setTimeout(() => { const search = document.getElementById("search"); if (search) search.focus(); }, 0);
      return;
    }
    if (current.view === "records") {
      if (key === "j") selectRow(1);
      else if (key === "k") selectRow(-1);
      else if ((key === "Enter" || key === "o") && state.selected >= 0) {
        const row = document.querySelectorAll('[data-testid="record-row"]')[state.selected];
        if (row) go(recordHref(row.getAttribute("data-id"), listQuery(current.params)));
      }
      return;
    }
    if (current.view === "record") {
      const panel = document.getElementById("decision-panel");
      if (key === "j") stepRecord(1);
      else if (key === "k") stepRecord(-1);
      else if (key === "u" || key === "Escape") go(recordsHref(listQuery(current.params)));
      else if ((key === "x" || key === "e") && panel) panel.decide("exclude");
      else if (key === "y" && panel) panel.decide("keep");
    }
  }

  function toggleHelp() {
    const help = document.getElementById("help");
    help.hidden = !help.hidden;
  }

  // ---------- start ----------

  function start() {
    try {
      state.exported = loadExport();
    } catch (err) {
      say("The embedded data (#spri-data) is not valid JSON: " + err.message, true);
      return;
    }
    const badge = document.getElementById("mode-badge");
    if (state.exported) {
      badge.textContent = "export";
      const modes = state.exported.overview.modes || {};
      const total = state.exported.sample && state.exported.sample.of !== undefined ? state.exported.sample.of
        : Object.values(modes).reduce((sum, m) => sum + (Number(m.records) || 0), 0);
      document.body.insertBefore(h("div", { id: "export-banner", class: "export-banner" },
        "Exported sample: " + fmt.int(state.exported.records.length) + " of " + fmt.int(total)
        + " records. The overview counts the whole run; the list holds the sample only."),
      document.getElementById("status-message"));
    } else if (state.readOnly) {
      badge.textContent = "read-only";
    }
    document.getElementById("help-toggle").addEventListener("click", toggleHelp);
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", route);
    route();  // first: it starts the overview's request, which the header then shares
    api.overview().then((overview) => {
      const runPath = document.getElementById("run-path");
      runPath.textContent = overview.path || "";
      runPath.title = (overview.files || []).join("\n");  // the PATHs given are short; these are what they name
      if (overview.read_only && !state.exported) badge.textContent = "read-only";
    }).catch(() => { /* route() reports the error */ });
  }

  // Export mode's data script may come after this script in the page: start once the page is parsed.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

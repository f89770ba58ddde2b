// The dashboard's pages: fetch JSON from /api/<page>, draw its Vega-Lite specs with vega-embed,
// show the numbers under each chart, refresh every few seconds. State for tests and curious
// users: window.totes (views by chart id, the last data, how many loads finished).
// Everything is inside one function: the vega bundle's own globals are left alone.
(() => {
"use strict";

const totes = window.totes = {
  page: document.body.dataset.page, refresh: Number(document.body.dataset.refresh || 0),
  views: {}, data: null, loads: 0, busy: false,
};
const main = document.getElementById("main");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function figures(columns, rows, rowClass = () => "") {
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c)));
  const body = rows.map((row) => el("tr", {class: rowClass(row)},
    ...columns.map((c) => el("td", {"data-column": c}, row[c] === null || row[c] === undefined ? "" : String(row[c])))));
  return el("table", {class: "figures"}, el("thead", {}, head), el("tbody", {}, ...body));
}

async function getJSON(name, query) {
  const response = await fetch(`/api/${name}?` + new URLSearchParams(query));
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function draw(id, spec) {
  if (totes.views[id]) totes.views[id].finalize();
  const result = await vegaEmbed(`#${CSS.escape(id)}`, spec, {renderer: "svg", actions: false});
  totes.views[id] = result.view;
}

function showError(message) {
  let box = document.getElementById("error");
  if (!box) { box = el("p", {id: "error", class: "error"}); main.prepend(box); }
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function queryFromURL(names) {
  const params = new URLSearchParams(location.search);
  return Object.fromEntries(names.map((n) => [n, params.get(n) || ""]));
}

function filterForm(fields, values, onSubmit) {
  const form = el("form", {class: "filters", id: "filters"});
  for (const [name, label, type, options] of fields) {
    let input;
    if (type === "select") {
      input = el("select", {name, id: `filter-${name}`}, ...options.map(([v, t]) => el("option", {value: v}, t)));
    } else {
      input = el("input", {name, id: `filter-${name}`, type, placeholder: options || ""});
    }
    input.value = values[name] || "";
    form.append(el("label", {}, label, input));
  }
  form.append(el("button", {type: "submit", id: "apply"}, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = Object.fromEntries(new FormData(form).entries());
    const clean = Object.fromEntries(Object.entries(query).filter(([, v]) => v));
    history.replaceState(null, "", location.pathname + (Object.keys(clean).length ? "?" + new URLSearchParams(clean) : ""));
    onSubmit(query);
  });
  return form;
}

async function loadOnce(load) {
  if (totes.busy) return;
  totes.busy = true;
  try {
    await load();
    showError("");
  } catch (error) {
    totes.lastError = error;
    showError(error.message);
  } finally {
    totes.busy = false;
    totes.loads += 1;
    document.body.dataset.loads = String(totes.loads);
  }
}

// A page's load: fetch `endpoint` with the page's filters, build its filter form (above
// `content`) from the first answer, whose choices (currencies, tables) it lists, then `render`.
// `fields(data, query)` gives the form's fields and the values it starts with.
function formedLoad(endpoint, filters, content, fields, render) {
  let query = queryFromURL(filters);
  let form = null;
  const load = async () => {
    const data = await getJSON(endpoint, query);
    totes.data = data;
    if (!form) {
      const [list, values] = fields(data, query);
      form = filterForm(list, values, (next) => { query = next; loadOnce(load); });
      main.append(form, content);
    }
    await render(data);
  };
  return load;
}

// -- business ------------------------------------------------------------------------------------
const BUSINESS_FILTERS = ["start", "end", "currency", "as_of"];

async function business() {
  const grid = el("div", {class: "grid", id: "charts"});
  const load = formedLoad("business", BUSINESS_FILTERS, grid, (data, query) => [[
    ["start", "from (created / due)", "date"], ["end", "to", "date"],
    ["currency", "currency", "select", [["", "all"], ...data.currencies.map((c) => [c, c])]],
    ["as_of", "as of (UTC)", "text", "2024-11-15T14:00:00"],
  ], query], async (data) => {
    for (const view of data.views) {
      let card = document.getElementById(`card-${view.name}`);
      if (!card) {
        card = el("section", {class: "card", id: `card-${view.name}`},
          el("h2", {}, view.title), el("p", {}, view.description), el("div", {id: `chart-${view.name}`}),
          el("div", {class: "numbers-table"}));
        grid.append(card);
      }
      await draw(`chart-${view.name}`, view.spec);
      card.querySelector(".numbers-table").replaceChildren(figures(view.columns, view.rows));
    }
    document.body.dataset.checkpoint = String(data.checkpoint_lsn ?? "");
    setStatus(`warehouse up to ${data.checkpoint ?? "-"} · ${new Date().toLocaleTimeString()}`);
  });
  await loadOnce(load);
  if (totes.refresh > 0) setInterval(() => loadOnce(load), totes.refresh * 1000);
}

// -- one order -----------------------------------------------------------------------------------
const VERSION_COLUMNS = ["note", "sales_record_id", "source_op", "source_lsn", "valid_from", "valid_to",
  "last_updated_date", "last_updated_time", "units_sold", "unit_price", "design_id", "sales_staff_id",
  "agreed_delivery_date", "agreed_delivery_location_id", "changed"];

async function order() {
  let query = queryFromURL(["id"]);
  const chart = el("div", {id: "chart-order"});
  const list = el("div", {id: "versions"});
  const load = async () => {
    const data = await getJSON("order", query);
    totes.data = data;
    await draw("chart-order", data.spec);
    const rows = data.versions.map((v) => ({...v,
      note: v.is_deleted ? "deleted" : v.silent ? "silent update" : v.is_current ? "current" : ""}));
    list.replaceChildren(el("h2", {}, `Sales order ${data.order ?? "-"}: ${rows.length} versions`),
      figures(VERSION_COLUMNS, rows, (r) => r.is_deleted ? "deleted" : r.silent ? "silent" : ""));
    setStatus(`order ${data.order ?? "-"} · ${new Date().toLocaleTimeString()}`);
  };
  main.append(filterForm([["id", "sales order id", "text", "busiest"]], query,
    (next) => { query = next; loadOnce(load); }), el("section", {class: "card"}, chart, list));
  await loadOnce(load);
  if (totes.refresh > 0) setInterval(() => loadOnce(load), totes.refresh * 1000);
}

// -- the lake as of a moment ---------------------------------------------------------------------
async function lake() {
  const out = el("div", {id: "lake-state"});
  const load = formedLoad("lake", ["table", "at", "compare"], out, (data, query) => [[
    ["table", "lake table", "select", data.tables.map((t) => [t, t])],
    ["at", "as of (version, LSN or time)", "text", "latest"],
    ["compare", "compare with (version, LSN or time)", "text", ""],
  ], {...query, table: data.table}], async (data) => {
    const parts = [el("h2", {id: "lake-count"}, `${data.table}${data.at ? " as of " + data.at : ""}: ${data.count} rows`),
      Object.assign(figures(data.columns || [], data.rows), {id: "lake-rows"})];
    if (data.difference) {
      const d = data.difference;
      parts.push(el("h2", {id: "lake-difference"},
        `from ${data.at || "latest"} to ${data.compare}: ${d.added.length} added, ${d.removed.length} removed, ${d.changed.length} changed`));
      for (const [name, rows] of [["added", d.added], ["removed", d.removed], ["changed", d.changed]]) {
        if (rows.length) parts.push(el("h3", {}, name), figures(Object.keys(rows[0]), rows));
      }
    }
    out.replaceChildren(...parts);
    setStatus(`lake · ${new Date().toLocaleTimeString()}`);
  });
  await loadOnce(load);
}

// -- pipeline health -----------------------------------------------------------------------------
const HEALTH_NUMBERS = [
  ["source_wal_lsn", "source WAL at"], ["slot_wal_retained_bytes", "WAL retained by the slot (bytes)"],
  ["lake_watermark", "lake watermark"], ["lake_behind_source_bytes", "lake behind the source (bytes)"],
  ["reader_events", "events read by the reader"], ["lake_events", "events in the lake"],
  ["warehouse_lsn", "warehouse up to"],
  ["warehouse_fact_rows", "warehouse fact rows"],
];

async function health() {
  const numbers = el("div", {class: "numbers", id: "health-numbers"});
  const grid = el("div", {class: "grid", id: "charts"});
  const lakeBox = el("section", {class: "card", id: "lake-facts"});
  main.append(numbers, grid, lakeBox);
  const load = async () => {
    const data = await getJSON("health", {});
    totes.data = data;
    const lakeFacts = data.lake || {};
    const items = [...HEALTH_NUMBERS.map(([key, label]) => [key, label, data.now[key]]),
      ["dead_letters", "dead letters", lakeFacts.dead_letters],
      ["lake_stored_bytes", "lake stored / live bytes",
        lakeFacts.stored_bytes === undefined ? "" : `${lakeFacts.stored_bytes} / ${lakeFacts.live_bytes}`],
      ["last_maintenance", "last maintenance", lakeFacts.last_maintenance || "not yet"]];
    numbers.replaceChildren(...items.map(([key, label, value]) =>
      el("div", {"data-key": key}, label, el("b", {}, value === null || value === undefined ? "-" : String(value)))));
    for (const [i, spec] of data.charts.entries()) {
      if (!document.getElementById(`chart-health-${i}`)) grid.append(el("section", {class: "card"}, el("div", {id: `chart-health-${i}`})));
      await draw(`chart-health-${i}`, spec);
    }
    lakeBox.replaceChildren(el("h2", {}, "Lake tables"), figures(["table", "stored_bytes", "live_bytes", "files"], lakeFacts.tables || []),
      el("h2", {}, "Latest dead letters"), figures(["failed_at", "table", "reason"], lakeFacts.dead_letter_rows || []));
    setStatus(`${data.samples} samples · ${new Date().toLocaleTimeString()}`);
  };
  await loadOnce(load);
  if (totes.refresh > 0) setInterval(() => loadOnce(load), totes.refresh * 1000);
}

({business, order, lake, health})[totes.page]();
})();

// The satisfaction report (/console/reports, admins): GET /console/api/csat?days=N, one row for the bot and one per
// agent (count, average, how many of each score 1-5, a bar of the distribution), and the total.
(function () {
  "use strict";
  const K = window.kefuConsole;
  const el = (name) => document.getElementById(name);
  const SCORES = ["1", "2", "3", "4", "5"];

  function cell(tag, value) {
    const n = document.createElement(tag);
    n.textContent = value == null ? "—" : String(value);
    return n;
  }

  function bar(line) {
    const b = document.createElement("div");
    b.className = "bar";
    b.setAttribute("role", "img");
    b.setAttribute("aria-label", SCORES.map((s) => `${s} 分 ${line.distribution[s]} 个`).join("，"));
    for (const s of SCORES) {
      if (!line.count || !line.distribution[s]) continue;
      const part = document.createElement("span");
      part.className = "s" + s;
      part.style.width = `${(100 * line.distribution[s]) / line.count}%`;
      b.appendChild(part);
    }
    return b;
  }

  function row(line, tag) {
    const tr = document.createElement("tr");
    tr.dataset.agentId = line.agent_id == null ? "bot" : line.agent_id;
    tr.append(cell(tag, line.name), cell("td", line.count), cell("td", line.average == null ? "—" : line.average.toFixed(2)),
              ...SCORES.map((s) => cell("td", line.distribution[s])));
    const td = document.createElement("td");
    td.appendChild(bar(line));
    tr.appendChild(td);
    return tr;
  }

  async function load() {
    const error = el("csat-error");
    error.hidden = true;
    try {
      const data = await K.api(`/console/api/csat?days=${encodeURIComponent(el("csat-days").value)}`);
      el("csat-rows").replaceChildren(...data.lines.map((line) => row(line, "th")));
      el("csat-total").replaceChildren(row(data.total, "td"));
      el("csat-since").textContent = `统计自 ${new Date(data.since).toLocaleString("zh-CN")} 起`;
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  el("csat-days").addEventListener("change", load);
  K.ready.then(load);
})();

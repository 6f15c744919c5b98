// The inbox page (/console): conversations on every channel, newest customer message first, kept live.
// Components, one render function each: renderWaiting (the queue count), renderRow (one conversation),
// renderList (the table), renderMore (pagination). A live event refetches the one conversation it names
// (GET /console/api/conversations/{id}/summary) and moves its row; every (re)connection of the event stream
// reloads the first page, since events sent while disconnected are not replayed.
(function () {
  "use strict";
  const K = window.kefuConsole;
  const rowsEl = document.getElementById("conversation-rows");
  const emptyEl = document.getElementById("inbox-empty");
  const moreEl = document.getElementById("more");
  const filtersEl = document.getElementById("filters");
  const state = { rows: new Map(), next: null, me: null, pending: new Map(), loading: 0 };

  function filters() {
    const f = new FormData(filtersEl);
    const out = {};
    for (const [key, value] of f.entries()) if (value) out[key] = value;
    return out;
  }

  function query(extra) {
    return new URLSearchParams({ ...filters(), ...extra, limit: "50" }).toString();
  }

  // Does a conversation belong in the list as filtered now? (the server applies the same rules)
  function matches(c) {
    const f = filters();
    if (f.channel && c.channel !== f.channel) return false;
    if (f.handler && c.handler !== f.handler) return false;
    if (f.intent && c.last_intent !== f.intent) return false;
    if (f.unanswered && !c.unanswered) return false;
    if (f.tag && !state.rows.has(c.id)) return false;  // a row does not carry its tags: only the server's page adds
    if (f.mine && c.agent_id !== state.me.id) return false;
    return Boolean(c.last_inbound_at);
  }

  function newer(a, b) {  // sort key: last_inbound_at desc, id desc
    if (a.last_inbound_at !== b.last_inbound_at) return a.last_inbound_at > b.last_inbound_at;
    return a.id > b.id;
  }

  function renderWaiting(count) {
    document.getElementById("waiting-count").textContent = String(count);
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    return td;
  }

  function badge(text, cls) {
    const span = document.createElement("span");
    span.className = "badge " + cls;
    span.textContent = text;
    return span;
  }

  function waitedFor(since) {
    if (!since) return "";
    const s = Math.max(0, Math.round((Date.now() - new Date(since).getTime()) / 1000));
    return s < 60 ? `${s} 秒` : s < 3600 ? `${Math.floor(s / 60)} 分钟` : `${Math.floor(s / 3600)} 小时`;
  }

  function renderRow(c) {
    const tr = document.createElement("tr");
    tr.className = "row" + (c.unanswered ? " unanswered" : "");
    tr.dataset.id = String(c.id);
    tr.dataset.handler = c.handler;
    tr.appendChild(cell(K.labels.channel[c.channel] || c.channel));
    tr.appendChild(cell(c.peer, "peer"));
    const preview = cell(c.preview, "preview");
    if (c.unanswered) { preview.prepend(" "); preview.prepend(badge("未回复", "unanswered")); }
    tr.appendChild(preview);
    tr.appendChild(cell(c.last_intent || ""));
    const handler = cell("");
    handler.appendChild(badge(K.labels.handler[c.handler] || c.handler, c.handler));
    tr.appendChild(handler);
    tr.appendChild(cell(c.agent_name || ""));
    tr.appendChild(cell(waitedFor(c.waiting_since), "waited"));
    tr.appendChild(cell(K.formatTime(c.last_inbound_at), "time"));
    tr.tabIndex = 0;  // reachable with Tab; Enter opens it like a click
    tr.addEventListener("click", () => { location.href = `/console/conversations/${c.id}`; });
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") location.href = `/console/conversations/${c.id}`; });
    tr._conversation = c;
    return tr;
  }

  function renderEmpty() { emptyEl.hidden = state.rows.size > 0; }
  function renderMore() { moreEl.hidden = !state.next; }

  function renderList(conversations, append) {
    if (!append) { rowsEl.replaceChildren(); state.rows.clear(); }
    for (const c of conversations) {
      const tr = renderRow(c);
      state.rows.set(c.id, tr);
      rowsEl.appendChild(tr);
    }
    renderEmpty();
    renderMore();
  }

  // Put one conversation's fresh row where it belongs (or take it out).
  function place(c) {
    const old = state.rows.get(c.id);
    if (old) { old.remove(); state.rows.delete(c.id); }
    if (matches(c)) {
      const rows = [...rowsEl.children];
      const after = rows.find((tr) => newer(c, tr._conversation));
      const last = rows.at(-1);
      // older than everything loaded while more pages exist: it lives on a later page
      if (after || !state.next || !last) {
        const tr = renderRow(c);
        tr.classList.add("flash");
        setTimeout(() => tr.classList.remove("flash"), 1500);
        rowsEl.insertBefore(tr, after || null);
        state.rows.set(c.id, tr);
      }
    }
    renderEmpty();
  }

  async function load(append) {
    const ticket = ++state.loading;
    const data = await K.api(`/console/api/conversations?${query(append && state.next ? { before: state.next } : {})}`);
    if (ticket !== state.loading) return;  // a newer load (filters changed) won
    state.next = data.next;
    renderWaiting(data.waiting);
    renderList(data.conversations, append);
  }

  async function refresh(id) {
    try {
      const data = await K.api(`/console/api/conversations/${id}/summary`);
      renderWaiting(data.waiting);
      place(data.conversation);
    } catch (err) {
      if (err.status !== 404) console.error("refresh failed", err);
    }
  }

  // several events for one conversation in a burst: one refetch
  function refreshSoon(id) {
    if (state.pending.has(id)) return;
    state.pending.set(id, setTimeout(() => { state.pending.delete(id); refresh(id); }, 100));
  }

  K.onEvent((event) => {
    if (event.type === "typing" || !event.conversation_id) return;
    refreshSoon(event.conversation_id);
  });
  K.onReady(() => { load(false).catch((err) => console.error(err)); });
  filtersEl.addEventListener("change", () => { load(false).catch((err) => console.error(err)); });
  filtersEl.addEventListener("submit", (e) => { e.preventDefault(); load(false); });
  moreEl.addEventListener("click", () => { load(true).catch((err) => console.error(err)); });
  setInterval(() => {  // the "waiting for" column counts up
    for (const tr of state.rows.values()) tr.querySelector(".waited").textContent = waitedFor(tr._conversation.waiting_since);
  }, 15000);

  // shown at once, even where the event stream cannot connect (a buffering proxy); every "ready" re-syncs
  K.ready.then((me) => { state.me = me; return load(false); }).catch((err) => console.error(err));
})();

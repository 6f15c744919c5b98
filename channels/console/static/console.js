// The console's shared layer, loaded by every signed-in page before the page's own script:
// the JSON API with the session's CSRF token, the live event stream, the presence control, logout,
// and the hook other panels use. No framework, no build step.
//
//   window.kefuConsole.ready                 a promise of the signed-in agent (GET /console/api/me)
//   window.kefuConsole.api(path, {method, body})  JSON in and out; throws an Error with .status/.code/.message
//   window.kefuConsole.onEvent(cb)           cb(event) for every live event (bus topic "desk")
//   window.kefuConsole.onReady(cb)           cb() on every (re)connection of the event stream: re-sync then
//   window.kefuConsole.onConversation(cb)    cb(data) each time the conversation view (re)loads its conversation
//                                            (data = GET /console/api/conversations/{id}); see docs/console.md
//   window.kefuConsole.labels / formatTime   the Chinese labels the pages share
(function () {
  "use strict";

  const LABELS = {
    channel: { web: "网页", wechat_mp: "公众号", wecom: "企业微信", wecom_kf: "微信客服", telephony: "电话", phone: "电话", webhook: "Webhook", api: "API" },
    handler: { waiting: "排队中", agent: "人工接待", bot: "机器人" },
    source: { model: "模型", fallback: "兜底回复", faq: "常见问题", approved: "已审核答案", rule: "规则", welcome: "欢迎语",
              handoff: "转人工", agent: "人工", csat: "满意度" },
    delivery: { pending: "待发送", sending: "发送中", sent: "已发送", delivered: "已送达", failed: "发送失败" },
  };

  const hooks = { event: [], ready: [], conversation: [] };
  const state = { me: null, csrf: "", source: null };
  let resolveReady;
  const ready = new Promise((resolve) => { resolveReady = resolve; });

  function call(list, arg) {
    for (const cb of list) {
      try { cb(arg); } catch (err) { console.error("kefuConsole hook failed", err); }
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  credentials: "same-origin" });
    if (r.status === 401) { location.href = "/console/login"; throw new Error("请先登录"); }
    let data = null;
    try { data = await r.json(); } catch { /* not JSON */ }
    if (!r.ok) {
      const err = new Error((data && data.error && data.error.message) || `请求失败（${r.status}）`);
      err.status = r.status;
      err.code = data && data.error ? data.error.code : "http_error";
      throw err;
    }
    return data;
  }

  function formatTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const now = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return d.toDateString() === now.toDateString() ? hm : `${d.getMonth() + 1}-${pad(d.getDate())} ${hm}`;
  }

  function renderLive(on) {
    const el = document.getElementById("live");
    if (!el) return;
    el.className = "live " + (on ? "on" : "off");
    el.textContent = on ? "实时" : "未连接";
  }

  function connectEvents() {
    // EventSource reconnects by itself (retry: 2000 from the server); each reconnection sends "ready" again
    const source = new EventSource("/console/api/events");
    state.source = source;
    source.addEventListener("ready", () => { renderLive(true); call(hooks.ready); });
    source.addEventListener("expired", () => { source.close(); location.href = "/console/login"; });
    source.onmessage = (e) => {
      let event;
      try { event = JSON.parse(e.data); } catch { return; }
      call(hooks.event, event);
    };
    source.onerror = () => { renderLive(false); };
  }

  function renderPresence() {
    const select = document.getElementById("presence");
    if (!select) return;
    select.value = state.me.status === "away" ? "away" : "online";
    select.addEventListener("change", async () => {
      try { await api("/console/api/presence", { method: "POST", body: { status: select.value } }); }
      catch (err) { alert(err.message); }
    });
  }

  function renderLogout() {
    const button = document.getElementById("logout");
    if (!button) return;
    button.addEventListener("click", async () => {
      try { await api("/console/api/logout", { method: "POST" }); } finally { location.href = "/console/login"; }
    });
  }

  window.kefuConsole = {
    ready,
    api,
    labels: LABELS,
    formatTime,
    me: () => state.me,
    onEvent(cb) { hooks.event.push(cb); },
    onReady(cb) { hooks.ready.push(cb); },
    onConversation(cb) {
      hooks.conversation.push(cb);
      if (window.kefuConsole.conversation) cb(window.kefuConsole.conversation);  // a panel loaded late
    },
    conversation: null,
    emitConversation(data) { window.kefuConsole.conversation = data; call(hooks.conversation, data); },
  };

  (async () => {
    const me = await api("/console/api/me");
    state.me = me;
    state.csrf = me.csrf;
    renderPresence();
    renderLogout();
    resolveReady(me);
    connectEvents();
  })().catch((err) => console.error("console start failed", err));
})();

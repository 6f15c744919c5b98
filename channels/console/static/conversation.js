// The conversation view (/console/conversations/{id}): transcript, conversation info, audit timeline, and the
// take-over buttons (claim, reply, hand back). Components, one render function each: renderHeader,
// renderActions, renderTranscript (renderMessage per message, renderSources per reply), renderInfo,
// renderTimeline, renderTyping. Every live event naming this conversation reloads it (GET
// /console/api/conversations/{id}); a "typing" event shows 对方正在输入… for 3 s. After each load the data goes to
// window.kefuConsole.onConversation callbacks (the panels of docs/console.md mount in the page's panel slots).
(function () {
  "use strict";
  const K = window.kefuConsole;
  const root = document.getElementById("conversation");
  const id = Number(root.dataset.conversationId);
  const el = (name) => document.getElementById(name);
  const TYPING_MS = 3000;
  const KINDS = {
    received: "收到消息", queued: "进入模型队列", reply_stored: "保存回复", dispatched: "已发出", delivered: "已送达",
    delivery_retry: "发送重试", delivery_failed: "发送失败", generation_started: "开始生成", generation_finished: "生成完成",
    generation_failed: "生成失败", kb_used: "引用知识库", intent: "识别意图", handed_off: "转人工", human_owned: "人工处理中的消息",
    desk_queued: "进入排队", desk_claimed: "客服接入", desk_handed_back: "交还机器人", moderated: "内容审核",
  };
  const state = { data: null, me: null, reloading: null, again: false, typingTimer: null };

  function text(tag, value, cls) {
    const node = document.createElement(tag);
    node.textContent = value == null ? "" : String(value);
    if (cls) node.className = cls;
    return node;
  }

  function showError(message) {
    const box = el("action-error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function mine(c) { return c.handler === "agent" && c.agent_id === state.me.id; }

  function renderHeader(c) {
    const channel = K.labels.channel[c.channel] || c.channel;
    el("conversation-title").textContent = `${channel} · ${c.peer}`;
    const b = el("handler-badge");
    b.className = "badge " + c.handler;
    b.textContent = c.handler === "agent" ? `人工接待：${c.agent_name || ""}` : (K.labels.handler[c.handler] || c.handler);
  }

  function renderActions(c) {
    const admin = state.me.role === "admin";
    el("claim").hidden = c.handler === "agent";
    el("claim").textContent = c.handler === "waiting" ? "接入会话" : "接管会话";
    el("hand-back").hidden = !(mine(c) || (admin && c.handler !== "bot"));
    const canWrite = mine(c);
    el("reply-text").disabled = !canWrite;
    el("reply-send").disabled = !canWrite;
    el("reply-text").placeholder = canWrite ? "输入回复，Ctrl+Enter 发送" : "接入会话后才能回复";
  }

  function renderSources(m) {
    if (!m.sources || !m.sources.length) return null;
    const names = m.sources.map((s) => s.title ? `《${s.title}》` : `${s.kind === "faq" ? "问答" : "段落"} #${s.id}（已删除）`);
    return text("p", "知识来源：" + [...new Set(names)].join("、"), "sources");
  }

  function renderMessage(m) {
    const li = document.createElement("li");
    li.className = "msg " + m.who;
    li.dataset.id = `${m.who}-${m.id}`;
    const meta = [K.formatTime(m.at)];
    if (m.who === "customer") {
      meta.unshift("客户");
      if (m.intent) meta.push(`意图：${m.intent}`);
    } else {
      meta.unshift(m.who === "agent" ? `客服 ${m.agent_name || ""}` : `机器人（${K.labels.source[m.source] || m.source}）`);
      if (m.delivery) meta.push(K.labels.delivery[m.delivery] || m.delivery);
    }
    li.appendChild(text("div", meta.join(" · "), "meta"));
    li.appendChild(text("div", m.text, "text"));
    const sources = renderSources(m);
    if (sources) li.appendChild(sources);
    return li;
  }

  function renderTranscript(messages) {
    const list = el("transcript");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(...messages.map(renderMessage));
    if (atBottom || !state.data) list.scrollTop = list.scrollHeight;
  }

  function renderInfo(c) {
    const rows = [["渠道", K.labels.channel[c.channel] || c.channel], ["账号", c.account], ["客户", c.peer],
                  ["处理方", K.labels.handler[c.handler] || c.handler], ["客服", c.agent_name || "—"],
                  ["最近意图", c.last_intent || "—"], ["转人工次数", c.handoffs],
                  ["排队开始", c.waiting_since ? K.formatTime(c.waiting_since) : "—"]];
    el("info").replaceChildren(...rows.flatMap(([k, v]) => [text("dt", k), text("dd", v)]));
  }

  function renderTimeline(events) {
    el("timeline").replaceChildren(...events.slice().reverse().map((e) => {
      const li = document.createElement("li");
      li.appendChild(text("span", K.formatTime(e.at) + " "));
      li.appendChild(text("span", KINDS[e.kind] || e.kind, "kind"));
      const detail = Object.entries(e.detail || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
      if (detail.length) li.appendChild(text("div", detail.join(" "), "detail"));
      return li;
    }));
  }

  function renderTyping(on) {
    el("typing").hidden = !on;
  }

  function render(data) {
    const c = data.conversation;
    renderHeader(c);
    renderActions(c);
    renderTranscript(data.messages);
    renderInfo(c);
    renderTimeline(data.timeline);
  }

  // one load at a time; events during a load ask for one more after it
  async function reload() {
    if (state.reloading) { state.again = true; return state.reloading; }
    state.reloading = (async () => {
      do {
        state.again = false;
        const data = await K.api(`/console/api/conversations/${id}`);
        render(data);
        state.data = data;
        K.emitConversation(data);
      } while (state.again);
    })().finally(() => { state.reloading = null; });
    return state.reloading;
  }

  async function act(path, body) {
    showError("");
    try {
      await K.api(`/console/api/conversations/${id}/${path}`, { method: "POST", body });
      return true;
    } catch (err) {
      showError(err.message);
      return false;
    } finally {
      await reload().catch(() => {});
    }
  }

  async function sendReply(e) {
    if (e) e.preventDefault();
    const box = el("reply-text");
    const value = box.value.trim();
    if (!value) { showError("回复内容不能为空"); return; }
    box.disabled = true;
    if (await act("reply", { text: value })) box.value = "";
    box.disabled = !mine(state.data.conversation);
    box.focus();
  }

  el("claim").addEventListener("click", () => act("claim"));
  el("hand-back").addEventListener("click", () => act("hand-back"));
  el("composer").addEventListener("submit", sendReply);
  el("reply-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.isComposing) sendReply(e);
  });

  K.onEvent((event) => {
    if (event.conversation_id !== id) return;
    if (event.type === "typing") {
      renderTyping(true);
      clearTimeout(state.typingTimer);
      state.typingTimer = setTimeout(() => renderTyping(false), TYPING_MS);
      return;
    }
    if (event.type === "message") renderTyping(false);
    reload().catch((err) => console.error(err));
  });
  K.onReady(() => { reload().catch((err) => showError(err.message)); });
  // shown at once, even where the event stream cannot connect (a buffering proxy); every "ready" re-syncs
  K.ready.then((me) => { state.me = me; return reload(); }).catch((err) => showError(err.message));
})();

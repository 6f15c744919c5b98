// The console extras in the conversation view, mounted in the slots conversation.html leaves (docs/console.md):
//   #notes-panel   内部备注: the conversation's private notes and a box to add one (never sent to the customer)
//   #tags-panel    标签: the conversation's tags, add (with the tags in use as suggestions) and remove
//   #canned-panel  快捷回复: typing "/" and a shortcut in the composer offers the canned replies that match;
//                  ↑/↓ choose, Enter/Tab or a click inserts the text in place of "/shortcut", Esc closes
//   transcript     设为常见问题 on each bot/agent reply (admins): a form prefilled with the customer's question and
//                  the reply, saved as an approved answer (POST /console/api/answers); 已设为常见问题 on those that are
// Every render function builds DOM nodes with textContent (no HTML from data). Panels reload on each
// kefuConsole.onConversation(data): after every load of the conversation (a live event naming it included).
(function () {
  "use strict";
  const K = window.kefuConsole;
  const root = document.getElementById("conversation");
  if (!K || !root) return;
  const id = Number(root.dataset.conversationId);
  const el = (name) => document.getElementById(name);
  const state = { me: null, canned: [], menu: [], selected: 0, allTags: [] };

  function node(tag, props = {}, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "text") n.textContent = v == null ? "" : String(v);
      else if (k === "on") for (const [ev, cb] of Object.entries(v)) n.addEventListener(ev, cb);
      else if (k in n && k !== "list") n[k] = v;
      else n.setAttribute(k, v);
    }
    for (const c of children) if (c) n.appendChild(c);
    return n;
  }

  function showPanelError(panel, message) {
    const box = panel.querySelector(".error");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  // --- notes ---------------------------------------------------------------------------------------------
  function mountNotes() {
    const panel = el("notes-panel");
    panel.className = "panel";
    const box = node("textarea", { id: "note-text", rows: 2, placeholder: "写给同事的备注，客户看不到",
                                   "aria-label": "备注内容" });
    const add = node("button", { id: "note-add", type: "button", className: "primary", text: "添加备注" });
    add.addEventListener("click", async () => {
      const text = box.value.trim();
      if (!text) { showPanelError(panel, "备注不能为空"); return; }
      add.disabled = true;
      try {
        await K.api(`/console/api/conversations/${id}/notes`, { method: "POST", body: { text } });
        box.value = "";
        showPanelError(panel, "");
        await loadNotes();
      } catch (err) { showPanelError(panel, err.message); } finally { add.disabled = false; }
    });
    panel.replaceChildren(node("h2", { text: "内部备注" }), node("p", { className: "hint", text: "仅客服可见，不会发送给客户" }),
                          node("ol", { id: "notes", className: "notes" }), box,
                          node("div", { className: "row" }, add),
                          node("p", { className: "error", role: "alert", hidden: true }));
  }

  function renderNotes(notes) {
    el("notes").replaceChildren(...notes.map((n) => node("li", {},
      node("div", { className: "meta", text: `${n.agent_name} · ${K.formatTime(n.created_at)}` }),
      node("div", { className: "text", text: n.text }))));
  }

  async function loadNotes() {
    renderNotes((await K.api(`/console/api/conversations/${id}/notes`)).notes);
  }

  // --- tags ----------------------------------------------------------------------------------------------
  function mountTags() {
    const panel = el("tags-panel");
    panel.className = "panel";
    const input = node("input", { id: "tag-input", type: "text", placeholder: "如 退款、VIP", maxLength: 32,
                                  "aria-label": "新标签", list: "tag-suggestions" });
    input.setAttribute("list", "tag-suggestions");
    const add = node("button", { id: "tag-add", type: "button", text: "添加标签" });
    const submit = async () => {
      const tag = input.value.trim();
      if (!tag) return;
      await changeTag("PUT", tag);
      input.value = "";
    };
    add.addEventListener("click", submit);
    input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.isComposing) { e.preventDefault(); submit(); } });
    panel.replaceChildren(node("h2", { text: "标签" }), node("ul", { id: "tags", className: "tags" }),
                          node("div", { className: "row" }, input, add), node("datalist", { id: "tag-suggestions" }),
                          node("p", { className: "error", role: "alert", hidden: true }));
  }

  async function changeTag(method, tag) {
    const panel = el("tags-panel");
    try {
      const data = await K.api(`/console/api/conversations/${id}/tags/${encodeURIComponent(tag)}`, { method });
      showPanelError(panel, "");
      renderTags(data.tags);
    } catch (err) { showPanelError(panel, err.message); }
  }

  function renderTags(tags) {
    el("tags").replaceChildren(...tags.map((t) => node("li", { className: "tag" }, node("span", { text: t }),
      node("button", { type: "button", title: `移除标签 ${t}`, "aria-label": `移除标签 ${t}`, text: "×",
                       on: { click: () => changeTag("DELETE", t) } }))));
    if (!tags.length) el("tags").appendChild(node("li", { className: "hint", text: "暂无标签" }));
  }

  async function loadTags() {
    const [mine, all] = await Promise.all([K.api(`/console/api/conversations/${id}/tags`), K.api("/console/api/tags")]);
    renderTags(mine.tags);
    el("tag-suggestions").replaceChildren(...all.tags.map((t) => node("option", { value: t.tag })));
  }

  // --- canned replies in the composer ---------------------------------------------------------------------
  const SLASH = /(^|\s)\/([^\s/]*)$/;

  function typedShortcut(box) {
    const m = box.value.slice(0, box.selectionStart).match(SLASH);
    return m ? { query: m[2], start: box.selectionStart - m[2].length - 1 } : null;
  }

  function closeMenu() {
    state.menu = [];
    el("canned-panel").replaceChildren();
  }

  function renderMenu() {
    const panel = el("canned-panel");
    if (!state.menu.length) { closeMenu(); return; }
    const list = node("ul", { id: "canned-menu", className: "canned-menu", role: "listbox", "aria-label": "快捷回复" },
      ...state.menu.map((c, i) => node("li", {
        role: "option", "aria-selected": String(i === state.selected), "data-shortcut": c.shortcut,
        on: { mousedown: (e) => { e.preventDefault(); insert(c); } },
      }, node("span", { className: "shortcut", text: "/" + c.shortcut }), node("span", { className: "preview", text: c.text }))));
    panel.replaceChildren(list);
  }

  function openMenu(box) {
    const typed = typedShortcut(box);
    if (!typed) { closeMenu(); return; }
    const q = typed.query.toLowerCase();
    state.menu = state.canned.filter((c) => c.shortcut.startsWith(q)).slice(0, 8);
    state.selected = 0;
    renderMenu();
  }

  function insert(c) {
    const box = el("reply-text");
    const typed = typedShortcut(box);
    if (!typed) return;
    const end = box.selectionStart;
    box.value = box.value.slice(0, typed.start) + c.text + box.value.slice(end);
    const at = typed.start + c.text.length;
    box.setSelectionRange(at, at);
    closeMenu();
    box.focus();
  }

  function mountCanned() {
    const box = el("reply-text");
    if (!box) return;
    box.addEventListener("input", () => openMenu(box));
    box.addEventListener("blur", () => setTimeout(closeMenu, 150));
    box.addEventListener("keydown", (e) => {
      if (!state.menu.length || e.isComposing) return;
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        const n = state.menu.length;
        state.selected = (state.selected + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
        renderMenu();
      } else if ((e.key === "Enter" && !e.ctrlKey && !e.metaKey) || e.key === "Tab") {
        e.preventDefault();
        e.stopImmediatePropagation();
        insert(state.menu[state.selected]);
      } else if (e.key === "Escape") {
        closeMenu();
      }
    }, true);
  }

  async function loadCanned() {
    state.canned = (await K.api("/console/api/canned")).canned;
  }

  // --- make this answer an FAQ ---------------------------------------------------------------------------
  async function addFaqButtons(data) {
    if (!state.me || state.me.role !== "admin") return;
    const made = new Set((await K.api("/console/api/answers")).answers.map((a) => a.reply_id));
    for (const m of data.messages) {
      if (m.who === "customer" || m.source === "csat") continue;
      const li = document.querySelector(`#transcript li[data-id="${m.who}-${m.id}"]`);
      if (!li || li.querySelector(".make-faq")) continue;
      const button = node("button", { type: "button", className: "link make-faq", "data-reply-id": m.id,
                                      text: "设为常见问题", on: { click: () => openFaqForm(m.id) } });
      if (made.has(m.id)) markMade(button);
      li.appendChild(button);
    }
  }

  function markMade(button) {
    button.textContent = "已设为常见问题";
    button.disabled = true;
  }

  async function openFaqForm(replyId) {
    let draft;
    try { draft = await K.api(`/console/api/replies/${replyId}/faq-draft`); }
    catch (err) { alert(err.message); return; }
    const question = node("textarea", { id: "faq-question", rows: 2, value: draft.question });
    const answer = node("textarea", { id: "faq-answer", rows: 5, value: draft.answer });
    const message = node("p", { className: "error", role: "alert", hidden: true });
    const back = node("div", { className: "modal-back" });
    const close = () => back.remove();
    const save = node("button", { id: "faq-save", type: "button", className: "primary", text: "保存为常见问题" });
    save.addEventListener("click", async () => {
      save.disabled = true;
      try {
        await K.api("/console/api/answers", { method: "POST",
          body: { reply_id: replyId, question: question.value, answer: answer.value } });
        close();
        const done = document.querySelector(`#transcript button.make-faq[data-reply-id="${replyId}"]`);
        if (done) markMade(done);
      } catch (err) {
        message.textContent = "无法保存：" + err.message;
        message.hidden = false;
      } finally { save.disabled = false; }
    });
    back.appendChild(node("div", { className: "modal", id: "faq-form", role: "dialog", "aria-modal": "true",
                                   "aria-label": "设为常见问题" },
      node("h2", { text: "设为常见问题" }),
      node("p", { className: "hint", text: "以后客户问到相同或相近的问题，将直接用这条答案回复（不经过模型）。" }),
      node("label", { text: "客户的问题" }, question), node("label", { text: "答案" }, answer), message,
      node("div", { className: "buttons" }, node("button", { type: "button", text: "取消", on: { click: close } }), save)));
    back.addEventListener("keydown", (e) => { if (e.key === "Escape") close(); });
    document.body.appendChild(back);
    question.focus();
  }

  // --- wiring --------------------------------------------------------------------------------------------
  mountNotes();
  mountTags();
  mountCanned();
  K.ready.then(async (me) => {
    state.me = me;
    await loadCanned().catch((err) => console.error("canned replies", err));
    K.onConversation((data) => {
      addFaqButtons(data).catch((err) => console.error("approved answers", err));
      loadNotes().catch((err) => showPanelError(el("notes-panel"), err.message));
      loadTags().catch((err) => showPanelError(el("tags-panel"), err.message));
    });
  });
})();

// The knowledge-base page (/console/kb, admins): the documents (GET /console/api/kb/documents), one document's
// passages and FAQ entries (GET …/documents/{id}); edit an FAQ entry (PUT /console/api/kb/faq/{id}: question,
// similar questions one per line, answer), add one to an FAQ sheet or to the hand-written FAQ (POST
// /console/api/kb/faq), delete a document, upload a file (POST …/documents?source=NAME with the file's bytes).
// Every change is audited by the server with the admin's username. DOM built with textContent only.
(function () {
  "use strict";
  const K = window.kefuConsole;
  const el = (name) => document.getElementById(name);
  const KINDS = { markdown: "Markdown", text: "文本", html: "HTML", pdf: "PDF", docx: "Word", faq_csv: "问答表 CSV",
                  faq_xlsx: "问答表 Excel", faq_manual: "手工问答", approved: "已审核回答" };
  const state = { documents: [], selected: null };

  function node(tag, props = {}, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "text") n.textContent = v == null ? "" : String(v);
      else if (k === "on") for (const [ev, cb] of Object.entries(v)) n.addEventListener(ev, cb);
      else if (k in n) n[k] = v;
      else n.setAttribute(k, v);
    }
    for (const c of children) if (c) n.appendChild(c);
    return n;
  }

  // replaceChildren without the nulls of optional parts (it would show them as the text "null")
  function fill(parent, ...children) {
    parent.replaceChildren(...children.filter(Boolean));
  }

  function say(message, isError) {
    el("kb-message").hidden = true;
    el("kb-error").hidden = true;
    if (!message) return;
    const box = el(isError ? "kb-error" : "kb-message");
    box.textContent = message;
    box.hidden = false;
  }

  function warn(data, done) {
    const warnings = data.warnings || [];
    say(warnings.length ? `${done}。注意：${warnings.join("；")}` : done, false);
  }

  // --- the document list ---------------------------------------------------------------------------------
  function renderDocuments(data) {
    el("kb-revision").textContent = data.revision;
    state.documents = data.documents;
    el("kb-documents").replaceChildren(...data.documents.map((d) => node("tr", {
      className: d.id === state.selected ? "selected" : "", "data-document-id": d.id },
      node("td", { text: d.title }), node("td", { text: d.source }), node("td", { text: KINDS[d.kind] || d.kind }),
      node("td", { text: d.version }), node("td", { text: d.passages }), node("td", { text: d.faq }),
      node("td", {},
        node("button", { type: "button", className: "view", text: "查看", on: { click: () => openDocument(d.id) } }),
        node("button", { type: "button", className: "delete", text: "删除", on: { click: () => deleteDocument(d) } })))));
  }

  async function loadDocuments() {
    renderDocuments(await K.api("/console/api/kb/documents"));
  }

  async function deleteDocument(d) {
    if (!confirm(`确定删除《${d.title}》（${d.source}）？删除后它的段落和问答不再用于回答。`)) return;
    try {
      await K.api(`/console/api/kb/documents/${d.id}`, { method: "DELETE" });
      if (state.selected === d.id) { state.selected = null; el("kb-detail").replaceChildren(); }
      say(`已删除《${d.title}》`, false);
      await loadDocuments();
    } catch (err) { say(err.message, true); }
  }

  async function upload(e) {
    e.preventDefault();
    const file = el("kb-file").files[0];
    if (!file) { say("请先选择文件", true); return; }
    try {
      const r = await fetch(`/console/api/kb/documents?source=${encodeURIComponent(file.name)}`, {
        method: "POST", body: file, credentials: "same-origin",
        headers: { "X-CSRF-Token": K.me().csrf, "Content-Type": "application/octet-stream", Accept: "application/json" },
      });
      const data = await r.json().catch(() => null);
      if (!r.ok) throw new Error((data && data.error && data.error.message) || `上传失败（${r.status}）`);
      const status = { new: "已导入", updated: "已更新", unchanged: "内容未变化" }[data.status] || data.status;
      warn(data, `${status}：《${data.document.title}》`);
      el("kb-file").value = "";
      await loadDocuments();
      await openDocument(data.document.id);
    } catch (err) { say(err.message, true); }
  }

  // --- one document --------------------------------------------------------------------------------------
  function faqForm(entry, onSave, onCancel) {
    const question = node("input", { type: "text", className: "faq-q", value: entry.question, "aria-label": "问题" });
    const similar = node("textarea", { className: "faq-similar", rows: 3, value: (entry.similar || []).join("\n"),
                                       "aria-label": "相似问法" });
    const answer = node("textarea", { className: "faq-a", rows: 4, value: entry.answer, "aria-label": "答案" });
    const save = node("button", { type: "button", className: "primary faq-save", text: "保存" });
    save.addEventListener("click", () => onSave({
      question: question.value, answer: answer.value,
      similar: similar.value.split("\n").map((s) => s.trim()).filter(Boolean),
    }));
    return node("div", { className: "faq-form" },
      node("label", { text: "问题" }, question), node("label", { text: "相似问法（每行一个）" }, similar),
      node("label", { text: "答案" }, answer),
      node("div", { className: "buttons" }, save, node("button", { type: "button", text: "取消", on: { click: onCancel } })));
  }

  function renderFaq(entry, documentId) {
    const li = node("li", { "data-faq-id": entry.id });
    const show = () => fill(li,
      node("div", { className: "q", text: entry.question }),
      entry.similar.length ? node("div", { className: "similar", text: "相似问法：" + entry.similar.join("、") }) : null,
      node("div", { className: "a", text: entry.answer }),
      node("button", { type: "button", className: "link faq-edit", text: "编辑", on: { click: edit } }));
    const edit = () => li.replaceChildren(faqForm(entry, async (body) => {
      try {
        const data = await K.api(`/console/api/kb/faq/${entry.id}`, { method: "PUT", body });
        warn(data, data.status === "unchanged" ? "内容未变化" : "已保存问答");
        await loadDocuments();
        await openDocument(documentId);
      } catch (err) { say(err.message, true); }
    }, show));
    show();
    return li;
  }

  function addForm(documentId) {
    const holder = node("div", {});
    const button = node("button", { type: "button", id: "faq-add", text: "新增问答" });
    const close = () => holder.replaceChildren(button);
    button.addEventListener("click", () => holder.replaceChildren(faqForm({ question: "", similar: [], answer: "" },
      async (body) => {
        try {
          const data = await K.api("/console/api/kb/faq", { method: "POST", body: { ...body, document_id: documentId } });
          warn(data, "已新增问答");
          await loadDocuments();
          await openDocument(data.faq.document_id);
        } catch (err) { say(err.message, true); }
      }, close)));
    close();
    return holder;
  }

  function renderDocument(data) {
    const d = data.document;
    const faqDocument = !data.passages.length && d.kind !== "approved";
    fill(el("kb-detail"),
      node("h2", { text: `《${d.title}》` }),
      node("p", { className: "muted", text: `${d.source} · ${KINDS[d.kind] || d.kind} · 第 ${d.version} 版 · 更新于 ${K.formatTime(d.updated_at)}` }),
      data.faq.length || faqDocument ? node("h3", { text: `问答（${data.faq.length}）` }) : null,
      faqDocument ? addForm(d.id) : null,
      data.faq.length ? node("ol", { className: "faq-list", id: "faq-list" }, ...data.faq.map((f) => renderFaq(f, d.id))) : null,
      data.passages.length ? node("h3", { text: `段落（${data.passages.length}）` }) : null,
      data.passages.length ? node("ol", { className: "passage-list" }, ...data.passages.map((p) => node("li", {},
        p.heading ? node("div", { className: "heading", text: p.heading }) : null,
        node("div", { className: "text", text: p.text })))) : null);
  }

  async function openDocument(documentId) {
    try {
      const data = await K.api(`/console/api/kb/documents/${documentId}`);
      state.selected = documentId;
      for (const tr of el("kb-documents").children) {
        tr.className = Number(tr.dataset.documentId) === documentId ? "selected" : "";
      }
      renderDocument(data);
    } catch (err) { say(err.message, true); }
  }

  function newManual() {
    const holder = node("div", {});
    el("kb-detail").replaceChildren(node("h2", { text: "新增问答（手工维护）" }),
      node("p", { className: "muted", text: "保存到“常见问题”文档（手工维护的问答），不属于任何上传的文件。" }), holder);
    holder.replaceChildren(faqForm({ question: "", similar: [], answer: "" }, async (body) => {
      try {
        const data = await K.api("/console/api/kb/faq", { method: "POST", body });
        warn(data, "已新增问答");
        await loadDocuments();
        await openDocument(data.faq.document_id);
      } catch (err) { say(err.message, true); }
    }, () => el("kb-detail").replaceChildren()));
  }

  el("kb-upload").addEventListener("submit", upload);
  el("faq-new-manual").addEventListener("click", newManual);
  K.ready.then(() => loadDocuments()).catch((err) => say(err.message, true));
})();

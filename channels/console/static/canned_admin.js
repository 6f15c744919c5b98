// Canned replies on the knowledge-base page (admins): the list (GET /console/api/canned), save one by its shortcut
// (PUT /console/api/canned/{shortcut}: new, or its text replaced), edit (fills the form), delete (DELETE …).
(function () {
  "use strict";
  const K = window.kefuConsole;
  const el = (name) => document.getElementById(name);

  function say(message) {
    el("canned-error").textContent = message || "";
    el("canned-error").hidden = !message;
  }

  function button(text, cls, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = text;
    b.addEventListener("click", onClick);
    return b;
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function render(canned) {
    el("canned-rows").replaceChildren(...canned.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.shortcut = c.shortcut;
      const actions = document.createElement("td");
      actions.append(button("编辑", "canned-edit", () => {
        el("canned-shortcut").value = c.shortcut;
        el("canned-text").value = c.text;
        el("canned-text").focus();
      }), button("删除", "canned-delete", () => remove(c.shortcut)));
      tr.append(cell("/" + c.shortcut), cell(c.text), actions);
      return tr;
    }));
  }

  async function load() {
    render((await K.api("/console/api/canned")).canned);
  }

  async function save(e) {
    e.preventDefault();
    const shortcut = el("canned-shortcut").value.trim().replace(/^\//, "");
    if (!shortcut) { say("请填写快捷词"); return; }
    try {
      await K.api(`/console/api/canned/${encodeURIComponent(shortcut)}`, { method: "PUT",
                                                                          body: { text: el("canned-text").value } });
      say("");
      el("canned-shortcut").value = "";
      el("canned-text").value = "";
      await load();
    } catch (err) { say(err.message); }
  }

  async function remove(shortcut) {
    if (!confirm(`确定删除快捷回复 /${shortcut}？`)) return;
    try {
      await K.api(`/console/api/canned/${encodeURIComponent(shortcut)}`, { method: "DELETE" });
      say("");
      await load();
    } catch (err) { say(err.message); }
  }

  el("canned-form").addEventListener("submit", save);
  K.ready.then(load).catch((err) => say(err.message));
})();

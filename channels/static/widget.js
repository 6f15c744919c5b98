// Kefu's chat widget for another site: one tag, <script src="https://kefu.example.com/v1/web/widget.js" async></script>.
// It adds a floating 在线客服 button; the button opens the gateway's chat page (/) in an iframe, so the chat's
// requests and socket stay on the gateway's own origin (no CORS needed). Optional attributes on the tag:
// data-title (the button's text) and data-position ("left" or "right", the default). No dependencies.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.src || window.__kefuWidget) return;
  window.__kefuWidget = true;
  var gateway = new URL(script.src).origin;
  var title = script.getAttribute("data-title") || "在线客服";
  var side = script.getAttribute("data-position") === "left" ? "left" : "right";

  function element(tag, id, css, attrs) {
    var el = document.createElement(tag);
    el.id = id;
    el.style.cssText = css;
    for (var name in attrs || {}) el.setAttribute(name, attrs[name]);
    return el;
  }

  // White on #0a7a3a is 5.4:1 (at least 4.5:1, as on the chat page).
  var button = element("button", "kefu-widget-button",
    "position:fixed;bottom:20px;" + side + ":20px;z-index:2147483646;padding:12px 18px;border:0;border-radius:24px;" +
    "background:#0a7a3a;color:#fff;font:15px/1.2 -apple-system,'PingFang SC','Microsoft YaHei','Noto Sans CJK SC'," +
    "sans-serif;box-shadow:0 2px 8px rgba(0,0,0,.25);cursor:pointer;",
    { type: "button", "aria-expanded": "false", "aria-controls": "kefu-widget-frame" });
  button.textContent = title;

  var frame = null;
  function open() {
    if (!frame) {
      frame = element("iframe", "kefu-widget-frame",
        "position:fixed;bottom:76px;" + side + ":20px;z-index:2147483647;width:min(380px,calc(100vw - 40px));" +
        "height:min(600px,calc(100vh - 100px));border:1px solid #8c8c8c;border-radius:8px;background:#fff;" +
        "box-shadow:0 4px 16px rgba(0,0,0,.25);",
        { title: title, src: gateway + "/", allow: "clipboard-write" });
      document.body.appendChild(frame);
    }
    frame.style.display = "block";
    button.setAttribute("aria-expanded", "true");
  }
  function close() {
    if (frame) frame.style.display = "none";
    button.setAttribute("aria-expanded", "false");
  }
  button.addEventListener("click", function () {
    if (frame && frame.style.display !== "none") close(); else open();
  });

  function mount() { document.body.appendChild(button); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();

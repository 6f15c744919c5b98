// The web chat page as a visitor uses it: Debian's headless Chromium, driven by playwright-core.
//
//   node tests/browser/chat_rules.mjs --url http://127.0.0.1:8000/ --screenshot chat.png \
//        --faq-question 请问可以开发票吗？ --faq-answer "电子发票会在…" \
//        --handoff-answer "抱歉，这里暂时没有人工客服。…" --promise "好的，正在为您转接人工客服，请稍候。" \
//        [--fallback "抱歉，我暂时无法回答…"] [--question "我的快递到哪里了？"] [--timeout-ms 60000] \
//        [--welcome "您好，我是智能客服…"] [--too-long 2001]
//
// It opens the page, waits until it says it is online, and types three messages into the page's own
// text box: an FAQ question (sent with the 发送 button), 转人工 (the button) and a question for the
// model (the Enter key). After each it waits for the answer bubble to be final and checks what the
// visitor sees: the FAQ answer; the honest "no person here" answer (the web has nobody to hand over
// to), and nowhere a promise of a person; a model answer that streamed in token by token. The page's
// WebSocket frames are watched too, for the message ids (printed, for the caller's database checks)
// and to tell a rule's answer (no token frames) from the model's.
//
// Around them: the welcome bubble is shown first and never sent; an Enter that confirms an IME composition
// (compositionstart, keydown with isComposing / keyCode 229) sends nothing and Shift+Enter is a newline; a
// message the server refuses (--too-long characters: text_too_long) comes back into the text box with a Chinese
// error; a reply the server says was cut (its frame's `truncated`) carries the visible marker, and no other;
// every text on the page is at least 4.5:1 against its background (getComputedStyle). Then a page on another
// origin (served here, on an ephemeral port) includes the gateway's /v1/web/widget.js with one <script> tag:
// its button opens the chat in an iframe, where an FAQ question gets its answer.
//
// Prints one JSON object on stdout ({"ok": …, "checks": […], "turns": […], "conversation": […]}),
// saves a screenshot of the page to --screenshot whatever happened, and exits 1 when a check failed
// (each failure also on stderr), 2 on bad arguments.

import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

import { MIN_CONTRAST, contrastVerdict, contrasts } from "./contrast.mjs";

const CHROMIUM = "/usr/bin/chromium";
// No connections beyond the page's own: this machine's network is closed to everything else.
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
const PERSON = "转人工";
const CUT_NOTE = "（回复过长，已截断）";

function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      screenshot: { type: "string" },
      "faq-question": { type: "string" },
      "faq-answer": { type: "string" },
      "handoff-answer": { type: "string" },
      promise: { type: "string" },
      fallback: { type: "string" },
      question: { type: "string", default: "你好，请问我的快递什么时候能到？" },
      "timeout-ms": { type: "string", default: "60000" },
      welcome: { type: "string", default: "" },
      "too-long": { type: "string", default: "2001" },
    },
  });
  const required = ["url", "screenshot", "faq-question", "faq-answer", "handoff-answer", "promise"];
  const missing = required.filter((name) => !values[name]);
  if (missing.length) {
    process.stderr.write(`chat_rules.mjs: missing ${missing.map((n) => "--" + n).join(", ")}\n`);
    process.exit(2);
  }
  return { ...values, timeoutMs: Number(values["timeout-ms"]) };
}

const opts = options();
const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), detail });
  return Boolean(ok);
}

// What crosses the page's WebSocket: sent message frames and the frames that answer them.
const sent = [];      // {text, client_msg_id}
const received = [];  // parsed frames, in order
function watchSocket(page) {
  page.on("websocket", (ws) => {
    ws.on("framesent", ({ payload }) => {
      const f = safeJson(payload);
      if (f && f.type === "message") sent.push({ text: f.text, client_msg_id: f.client_msg_id });
    });
    ws.on("framereceived", ({ payload }) => {
      const f = safeJson(payload);
      if (f) received.push(f);
    });
  });
}
function safeJson(payload) {
  try { return JSON.parse(typeof payload === "string" ? payload : payload.toString("utf8")); } catch { return null; }
}

// What the visitor sees: every bubble, in order, with who said it.
async function conversation(page) {
  return page.locator("#log .row").evaluateAll((rows) => rows.map((row) => {
    const bubble = row.querySelector(".bubble");
    const note = row.querySelector(".note.truncated");
    const who = row.classList.contains("me") ? "visitor" : row.classList.contains("welcome") ? "welcome"
      : row.classList.contains("notice") ? "notice" : "kefu";
    return {
      who,
      text: bubble ? bubble.textContent : "",
      pending: bubble ? bubble.classList.contains("pending") : false,
      error: bubble ? bubble.classList.contains("error") : false,
      marker: note && note.getClientRects().length > 0 ? note.textContent : null,
    };
  }));
}

// Type like a visitor into the page's text box, send with the button or Enter, and wait until the
// answer bubble after it is final (the page drops the pending cursor when the reply frame arrives).
async function ask(page, text, how) {
  const before = (await conversation(page)).filter((b) => b.who === "kefu").length;
  const box = page.getByPlaceholder(/请输入您的问题/);
  await box.click();
  await box.pressSequentially(text, { delay: 20 });
  if (how === "enter") await box.press("Enter");
  else await page.getByRole("button", { name: "发送" }).click();
  await page.waitForFunction((n) => {
    const bots = document.querySelectorAll("#log .row.bot .bubble");
    return bots.length > n && !bots[bots.length - 1].classList.contains("pending");
  }, before, { timeout: opts.timeoutMs });
  const bubbles = await conversation(page);
  const kefu = bubbles.filter((b) => b.who === "kefu");
  const shown = kefu[kefu.length - 1];
  // Playwright reports the frames as events of their own: give the last ones a moment to be counted.
  let messageId = null, reply = null;
  for (const until = Date.now() + 5000; Date.now() < until && !reply; await page.waitForTimeout(50)) {
    const mine = sent.findLast((m) => m.text === text);
    const accepted = received.find((f) => f.type === "accepted" && mine && f.client_msg_id === mine.client_msg_id);
    messageId = accepted ? accepted.message_id : null;
    reply = received.find((f) => f.type === "reply" && messageId !== null && f.message_id === messageId) ?? null;
  }
  const tokens = received.filter((f) => f.type === "token" && f.message_id === messageId).length;
  return {
    text, sent_with: how, message_id: messageId, shown: shown.text, error: shown.error, tokens,
    reply: reply ? reply.text : null, box_cleared: (await box.inputValue()) === "",
    truncated: reply ? reply.truncated : null, marker: shown.marker,
    visitor_bubble: bubbles.some((b) => b.who === "visitor" && b.text === text),
  };
}

function checkTurn(turn) {
  check(`${turn.text}: the visitor's own message is shown`, turn.visitor_bubble, "a visitor bubble with the typed text");
  check(`${turn.text}: the text box is empty again`, turn.box_cleared, "after sending");
  check(`${turn.text}: the page got an accepted frame`, turn.message_id !== null, `message_id ${turn.message_id}`);
  check(`${turn.text}: the bubble is the reply that was sent`, turn.reply !== null && turn.shown === turn.reply,
    `shown ${JSON.stringify(turn.shown)}, reply frame ${JSON.stringify(turn.reply)}`);
  check(`${turn.text}: not an error bubble`, !turn.error, turn.shown);
  check(`${turn.text}: the reply frame says whether it was cut`, typeof turn.truncated === "boolean",
    `truncated ${turn.truncated}`);
  check(`${turn.text}: the cut marker is shown exactly when the reply was cut`,
    turn.marker === (turn.truncated ? CUT_NOTE : null), `truncated ${turn.truncated}, marker ${turn.marker}`);
}

// An Enter that confirms an IME composition must not send, whichever way the browser reports it; Shift+Enter is a
// newline. Synthetic events, as Chromium dispatches them while 拼音 is being composed.
async function imeAndNewline(page) {
  const box = page.getByPlaceholder(/请输入您的问题/);
  await box.click();
  await box.fill("ni");
  const framesBefore = sent.length;
  // The page sends (and shows the visitor's bubble) inside its keydown handler: what the DOM holds right after the
  // dispatch is the answer, no waiting involved.
  const ime = await box.evaluate((el) => {
    const rows = () => document.querySelectorAll("#log .row").length;
    const before = rows();
    const prevented = [];
    el.dispatchEvent(new CompositionEvent("compositionstart", { bubbles: true, data: "" }));
    el.dispatchEvent(new CompositionEvent("compositionupdate", { bubbles: true, data: "ni" }));
    const composing = new KeyboardEvent("keydown", { key: "Enter", code: "Enter", bubbles: true, cancelable: true,
                                                     isComposing: true });
    el.dispatchEvent(composing);
    prevented.push(composing.defaultPrevented);
    el.dispatchEvent(new CompositionEvent("compositionend", { bubbles: true, data: "你" }));
    // Safari and some IMEs: the confirming keydown comes after compositionend, with keyCode 229 only
    const legacy = new KeyboardEvent("keydown", { key: "Enter", code: "Enter", bubbles: true, cancelable: true });
    Object.defineProperty(legacy, "keyCode", { get: () => 229 });
    el.dispatchEvent(legacy);
    prevented.push(legacy.defaultPrevented);
    return { prevented, added: rows() - before, value: el.value };
  });
  check("IME: an Enter confirming a composition sends nothing", ime.added === 0 && ime.value === "ni",
    `rows added ${ime.added}, box ${JSON.stringify(ime.value)}`);
  check("IME: the composing Enters are left to the IME (not prevented)", ime.prevented.every((p) => p === false),
    JSON.stringify(ime.prevented));
  // (the plain Enter that does send is the model question's, below)
  const rowsBefore = (await conversation(page)).length;
  await box.press("End");
  await box.press("Shift+Enter");
  await box.pressSequentially("hao", { delay: 10 });
  const rowsAfter = (await conversation(page)).length;
  check("Shift+Enter: a newline, nothing sent", (await box.inputValue()) === "ni\nhao" && sent.length === framesBefore
    && rowsAfter === rowsBefore, `rows added ${rowsAfter - rowsBefore}, box ${JSON.stringify(await box.inputValue())}`);
  await box.fill("");
}

// A message the server refuses comes back into the text box, with the error in Chinese.
async function refused(page, text) {
  const box = page.getByPlaceholder(/请输入您的问题/);
  const errorsBefore = await page.locator("#log .bubble.error").count();
  await box.fill(text);
  await page.getByRole("button", { name: "发送" }).click();
  await page.waitForFunction((n) => document.querySelectorAll("#log .bubble.error").length > n, errorsBefore,
    { timeout: opts.timeoutMs });
  const mine = sent.findLast((m) => m.text === text);
  let frame = null;
  for (const until = Date.now() + 5000; Date.now() < until && !frame; await page.waitForTimeout(50)) {
    frame = received.find((f) => f.type === "error" && mine && f.client_msg_id === mine.client_msg_id) ?? null;
  }
  const bubbles = await conversation(page);
  const shown = bubbles.filter((b) => b.error).at(-1);
  const restored = await box.inputValue();
  check("too long: the server refused it with a code, naming the message", frame !== null && frame.code === "text_too_long",
    JSON.stringify(frame && { code: frame.code, client_msg_id: frame.client_msg_id }));
  check("too long: the text is back in the box, whole", restored === text, `${restored.length} of ${text.length} characters`);
  check("too long: it is not shown as sent", !bubbles.some((b) => b.who === "visitor" && b.text === text), "no visitor bubble");
  check("too long: the error is in Chinese", /太长/.test(shown.text) && !/[A-Za-z]{3,}/.test(shown.text), shown.text);
  await box.fill("");
  return { code: frame && frame.code, shown: shown.text };
}

function checkContrast(where, found) {
  const { ok, detail } = contrastVerdict(found);
  check(`${where}: every text is at least ${MIN_CONTRAST}:1 against its background`, ok, detail);
}

// A saved visitor token the gateway no longer accepts (expired, or the key changed): the page says so in Chinese,
// starts a new session and goes online. Run last: it replaces the context's saved session.
async function expiredSession(context) {
  const page = await context.newPage();
  try {
    await page.goto(opts.url, { timeout: opts.timeoutMs });
    const stale = { visitor_id: "v-stale", token: "stale.token", expires_at: Math.floor(Date.now() / 1000) + 86400 };
    await page.evaluate((s) => localStorage.setItem("kefu.session", JSON.stringify(s)), stale);
    await page.reload({ timeout: opts.timeoutMs });
    await page.locator("#status.online").waitFor({ timeout: opts.timeoutMs });
    const notices = (await conversation(page)).filter((b) => b.who === "notice").map((b) => b.text);
    const saved = JSON.parse(await page.evaluate(() => localStorage.getItem("kefu.session")));
    check("expired session: the visitor is told in Chinese", notices.some((t) => t.includes("会话已过期")),
      JSON.stringify(notices));
    check("expired session: a new session replaced it", saved.token !== stale.token && saved.visitor_id !== stale.visitor_id,
      saved.visitor_id);
    return { notices };
  } finally {
    await page.close().catch(() => {});
  }
}

// A page on another origin that includes the widget with one tag, served from here.
function hostPage(gateway) {
  const html = `<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>某商店</title></head>
<body style="font:16px sans-serif;color:#222;background:#fff"><h1>某商店</h1><p>欢迎光临。</p>
<script src="${gateway}/v1/web/widget.js" async></script></body></html>`;
  const server = createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(html);
  });
  return new Promise((resolve) => server.listen(0, "localhost", () => resolve(server)));
}

async function widget(context) {
  const gateway = new URL(opts.url).origin;
  const server = await hostPage(gateway);
  const page = await context.newPage();
  try {
    const host = `http://localhost:${server.address().port}/`;
    await page.goto(host, { timeout: opts.timeoutMs });
    const button = page.locator("#kefu-widget-button");
    await button.waitFor({ timeout: opts.timeoutMs });
    check("widget: the host page is on another origin", new URL(page.url()).origin !== gateway, `${page.url()} vs ${gateway}`);
    check("widget: the button is shown", await button.isVisible() && (await button.textContent()) === "在线客服",
      await button.textContent());
    checkContrast("widget host page", (await contrasts(page)).filter((f) => f.element.startsWith("button#kefu")));
    await button.click();
    const iframe = page.locator("#kefu-widget-frame");
    await iframe.waitFor({ timeout: opts.timeoutMs });
    check("widget: the iframe shows the gateway's chat page", (await iframe.getAttribute("src")) === gateway + "/",
      await iframe.getAttribute("src"));
    const chat = page.frameLocator("#kefu-widget-frame");
    await chat.locator("#status.online").waitFor({ timeout: opts.timeoutMs });
    const box = chat.getByPlaceholder(/请输入您的问题/);
    await box.fill(opts["faq-question"]);
    await box.press("Enter");
    await chat.locator("#log .row.bot .bubble:not(.pending)").first().waitFor({ timeout: opts.timeoutMs });
    const answer = await chat.locator("#log .row.bot .bubble").first().textContent();
    check("widget: a message round-trips in the iframe", answer === opts["faq-answer"], JSON.stringify(answer));
    await button.click();
    check("widget: the button closes it again", !(await iframe.isVisible()), "iframe hidden");
    return { host, answer };
  } finally {
    await page.close().catch(() => {});
    server.close();
  }
}

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "kefu-chromium-"));  // a new, empty profile every run
  let context = null;
  const turns = [];
  const extra = {};
  let seen = [];
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
      viewport: { width: 720, height: 640 }, locale: "zh-CN",
    });
    const page = context.pages()[0] ?? await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(String(err)));
    watchSocket(page);
    await page.goto(opts.url, { timeout: opts.timeoutMs });
    check("the page is the chat page", (await page.title()).includes("在线客服"), await page.title());
    await page.locator("#status.online").waitFor({ timeout: opts.timeoutMs });
    check("the page says it is online", (await page.locator("#status").textContent()) === "在线", "status 在线");
    const first = (await conversation(page))[0];
    check("the welcome is the first bubble", opts.welcome ? first && first.who === "welcome" && first.text === opts.welcome
      : !first || first.who !== "welcome", JSON.stringify(first));
    await imeAndNewline(page);

    const faq = await ask(page, opts["faq-question"], "button");
    turns.push({ rule: "faq", ...faq });
    checkTurn(faq);
    check("FAQ question: the FAQ answer is shown", faq.shown === opts["faq-answer"], JSON.stringify(faq.shown));
    check("FAQ question: answered without the model", faq.tokens === 0, `${faq.tokens} token frames`);

    const person = await ask(page, PERSON, "button");
    turns.push({ rule: "asks_for_person_none_available", ...person });
    checkTurn(person);
    check("转人工: the honest no-person answer is shown", person.shown === opts["handoff-answer"],
      JSON.stringify(person.shown));
    check("转人工: answered without the model", person.tokens === 0, `${person.tokens} token frames`);

    const model = await ask(page, opts.question, "enter");
    turns.push({ rule: "model", ...model });
    checkTurn(model);
    check("question: the model's answer streamed in", model.tokens > 0, `${model.tokens} token frames`);
    const canned = [opts["faq-answer"], opts["handoff-answer"], opts.promise, opts.fallback].filter(Boolean);
    check("question: a model answer is shown (not a canned one)",
      model.shown.trim() !== "" && !canned.includes(model.shown), JSON.stringify(model.shown));

    const refusal = await refused(page, "很".repeat(Number(opts["too-long"])));
    extra.refusal = refusal;

    seen = await conversation(page);
    check("the welcome was never sent", !sent.some((m) => opts.welcome && m.text === opts.welcome),
      `${sent.length} message frames`);
    const kefuSaid = seen.filter((b) => b.who === "kefu").map((b) => b.text);
    check("three answers, one per message", kefuSaid.length === 3, `${kefuSaid.length} answer bubbles`);
    check("nothing on the page promises a person",
      !kefuSaid.some((t) => t.includes(opts.promise) || t.includes("正在为您转接")), JSON.stringify(kefuSaid));
    check("no script errors on the page", pageErrors.length === 0, pageErrors.join("; "));
    const found = await contrasts(page);
    extra.contrast = found;
    checkContrast("chat page", found);
    await page.screenshot({ path: opts.screenshot });
    extra.widget = await widget(context);
    extra.expired = await expiredSession(context);
  } catch (err) {
    check("the page could be driven to the end", false, String(err && err.stack ? err.stack : err));
    if (context) {
      const page = context.pages()[0];
      if (page) {
        seen = await conversation(page).catch(() => seen);
        await page.screenshot({ path: opts.screenshot }).catch(() => {});
      }
    }
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  const failed = checks.filter((c) => !c.ok);
  const result = {
    ok: failed.length === 0, url: opts.url, screenshot: opts.screenshot, checks, turns,
    conversation: seen.map(({ who, text, marker }) => ({ who, text, marker })), ...extra,
  };
  process.stdout.write(JSON.stringify(result, null, 2) + "\n");
  for (const c of failed) process.stderr.write(`FAILED: ${c.name} — ${c.detail}\n`);
  process.exit(failed.length === 0 ? 0 : 1);
}

await main();

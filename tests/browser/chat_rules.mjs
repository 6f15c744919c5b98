// The web chat page as a visitor uses it: Debian's headless Chromium, driven by playwright-core.
//
//   node tests/browser/chat_rules.mjs --url http://127.0.0.1:8000/ --screenshot chat.png \
//        --faq-question 请问可以开发票吗？ --faq-answer "电子发票会在…" \
//        --handoff-answer "抱歉，这里暂时没有人工客服。…" --promise "好的，正在为您转接人工客服，请稍候。" \
//        [--fallback "抱歉，我暂时无法回答…"] [--question "我的快递到哪里了？"] [--timeout-ms 60000]
//
// It opens the page, waits until it says it is online, and types three messages into the page's own
// text box: an FAQ question (sent with the 发送 button), 转人工 (the button) and a question for the
// model (the Enter key). After each it waits for the answer bubble to be final and checks what the
// visitor sees: the FAQ answer; the honest "no person here" answer (the web has nobody to hand over
// to), and nowhere a promise of a person; a model answer that streamed in token by token. The page's
// WebSocket frames are watched too, for the message ids (printed, for the caller's database checks)
// and to tell a rule's answer (no token frames) from the model's.
//
// Prints one JSON object on stdout ({"ok": …, "checks": […], "turns": […], "conversation": […]}),
// saves a screenshot of the page to --screenshot whatever happened, and exits 1 when a check failed
// (each failure also on stderr), 2 on bad arguments.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
// No connections beyond the page's own: this machine's network is closed to everything else.
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
const PERSON = "转人工";

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
    return {
      who: row.classList.contains("me") ? "visitor" : "kefu",
      text: bubble ? bubble.textContent : "",
      pending: bubble ? bubble.classList.contains("pending") : false,
      error: bubble ? bubble.classList.contains("error") : false,
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
}

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "kefu-chromium-"));  // a new, empty profile every run
  let context = null;
  const turns = [];
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

    seen = await conversation(page);
    const kefuSaid = seen.filter((b) => b.who === "kefu").map((b) => b.text);
    check("three answers, one per message", kefuSaid.length === 3, `${kefuSaid.length} answer bubbles`);
    check("nothing on the page promises a person",
      !kefuSaid.some((t) => t.includes(opts.promise) || t.includes("正在为您转接")), JSON.stringify(kefuSaid));
    check("no script errors on the page", pageErrors.length === 0, pageErrors.join("; "));
    await page.screenshot({ path: opts.screenshot });
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
    conversation: seen.map(({ who, text }) => ({ who, text })),
  };
  process.stdout.write(JSON.stringify(result, null, 2) + "\n");
  for (const c of failed) process.stderr.write(`FAILED: ${c.name} — ${c.detail}\n`);
  process.exit(failed.length === 0 ? 0 : 1);
}

await main();

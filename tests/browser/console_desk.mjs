// The agent console and the chat page together: a person takes a conversation over from the bot and gives it back.
// Debian's headless Chromium, driven by playwright-core; two browser contexts (the agent's, the visitor's).
//
//   node tests/browser/console_desk.mjs --url http://127.0.0.1:8000 --username alice --password "…" --agent-name 小爱 \
//        --promise "好的，正在为您转接人工客服，请稍候。" --reply "您好，我是客服小爱" --question "请问几点发货？" \
//        --inbox-shot docs/console-inbox.png --conversation-shot docs/console-conversation.png [--timeout-ms 60000]
//
// 1. The agent logs into /console (the login form) and waits until the inbox's live stream is connected.
// 2. The visitor opens the chat page (/) and sends 转人工; the page shows the desk's promise (--promise).
// 3. Without any reload (a marker set on the inbox page survives), the inbox shows a waiting conversation and the
//    queue count goes to 1. Screenshot of the inbox.
// 4. The agent opens it, claims it (接入会话) — the customer's typing shows —, types --reply and sends; the
//    visitor's page shows that text (a reply frame without a message id: an agent's message).
// 5. The agent hands back (交还机器人); the visitor sends --question and gets an answer to that very message (the
//    reply frame naming its message id); the open conversation view shows the question and a bot reply live.
//    Screenshot of the conversation view.
// Around it: every text on both console pages is at least 4.5:1 against its background, and no script error.
// While the agent holds it the customer's typing (the desk's "typing" events) shows 对方正在输入….
//
// Prints one JSON object ({"ok", "checks", "reply", "answer", …}) and exits 1 when a check failed, 2 on bad
// arguments.

import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

import { MIN_CONTRAST, contrastVerdict, contrasts } from "./contrast.mjs";

const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];

function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" }, username: { type: "string" }, password: { type: "string" },
      promise: { type: "string" }, reply: { type: "string" }, question: { type: "string" },
      "agent-name": { type: "string" },
      "inbox-shot": { type: "string" }, "conversation-shot": { type: "string" },
      "timeout-ms": { type: "string", default: "60000" },
    },
  });
  const missing = ["url", "username", "password", "agent-name", "promise", "reply", "question", "inbox-shot",
                   "conversation-shot"]
    .filter((name) => !values[name]);
  if (missing.length) {
    process.stderr.write(`console_desk.mjs: missing ${missing.map((n) => "--" + n).join(", ")}\n`);
    process.exit(2);
  }
  return { ...values, url: values.url.replace(/\/$/, ""), timeoutMs: Number(values["timeout-ms"]) };
}

const opts = options();
const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), detail });
  return Boolean(ok);
}

// The visitor's WebSocket frames, to tie each reply to the message it answers.
const frames = [];
const accepted = new Map();  // message text -> message_id
function watchSocket(page) {
  page.on("websocket", (ws) => {
    ws.on("framereceived", ({ payload }) => {
      try { frames.push(JSON.parse(payload)); } catch { /* not JSON */ }
    });
  });
}

async function waitFrame(pred, what) {
  const deadline = Date.now() + opts.timeoutMs;
  while (Date.now() < deadline) {
    const found = frames.find(pred);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${what} frame within ${opts.timeoutMs} ms`);
}

async function visitorSays(page, text) {
  const before = frames.length;
  await page.locator("#text").fill(text);
  await page.locator("#send").click();
  const ack = await waitFrame((f, i) => i >= before && f.type === "accepted", `accepted (${text})`);
  accepted.set(text, ack.message_id);
  return ack.message_id;
}

async function bubbles(page) {
  return page.locator("#log .row").evaluateAll((rows) => rows.map((row) => ({
    cls: row.className, text: (row.querySelector(".bubble") || row).textContent,
  })));
}

function checkContrast(where, found) {
  const { ok, detail } = contrastVerdict(found);
  check(`${where}: every text is at least ${MIN_CONTRAST}:1 against its background`, ok, detail);
}

async function login(agent) {
  await agent.goto(`${opts.url}/console/login`, { timeout: opts.timeoutMs });
  check("the login page is in Chinese", (await agent.title()).includes("登录"), await agent.title());
  await agent.locator("#username").fill(opts.username);
  await agent.locator("#password").fill(opts.password);
  await Promise.all([agent.waitForURL(`${opts.url}/console`, { timeout: opts.timeoutMs }),
                     agent.locator("#login-submit").click()]);
  await agent.locator("#live.on").waitFor({ timeout: opts.timeoutMs });
  check("the console's live stream is connected", (await agent.locator("#live").textContent()) === "实时", "实时");
}

async function main() {
  let browser;
  const result = {};
  const pageErrors = [];
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    const agentContext = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "zh-CN" });
    const visitorContext = await browser.newContext({ viewport: { width: 720, height: 640 }, locale: "zh-CN" });
    const agent = await agentContext.newPage();
    const visitor = await visitorContext.newPage();
    for (const page of [agent, visitor]) page.on("pageerror", (err) => pageErrors.push(String(err)));
    watchSocket(visitor);

    // 1. the agent signs in; the inbox is empty of waiting conversations
    await login(agent);
    await agent.evaluate(() => { window.__kefuNoReload = "still the same page"; });
    const waitingBefore = Number(await agent.locator("#waiting-count").textContent());

    // 2. the visitor asks for a person
    await visitor.goto(`${opts.url}/`, { timeout: opts.timeoutMs });
    await visitor.locator("#status.online").waitFor({ timeout: opts.timeoutMs });
    const askId = await visitorSays(visitor, "转人工");
    const promise = await waitFrame((f) => f.type === "reply" && f.message_id === askId, "reply to 转人工");
    check("转人工: the visitor is told a person is coming", promise.text === opts.promise, promise.text);

    // 3. the inbox shows it waiting, live
    const row = agent.locator('#conversation-rows tr[data-handler="waiting"]').first();
    await row.waitFor({ timeout: opts.timeoutMs });
    await agent.waitForFunction((n) => Number(document.getElementById("waiting-count").textContent) > n, waitingBefore,
      { timeout: opts.timeoutMs });
    check("the inbox updated without a reload", await agent.evaluate(() => window.__kefuNoReload) === "still the same page",
      "marker kept");
    const rowText = await row.textContent();
    check("the waiting row shows the customer's message", rowText.includes("转人工"), rowText);
    result.inbox = { row: rowText, waiting: await agent.locator("#waiting-count").textContent() };
    checkContrast("inbox", await contrasts(agent));
    await agent.screenshot({ path: opts["inbox-shot"] });

    // 4. the agent opens it, claims it and replies
    await Promise.all([agent.waitForURL(/\/console\/conversations\/\d+$/, { timeout: opts.timeoutMs }), row.click()]);
    result.conversation_id = Number(agent.url().split("/").at(-1));
    await agent.locator("#claim:not([hidden])").waitFor({ timeout: opts.timeoutMs });
    await agent.locator("#claim").click();
    await agent.locator("#reply-text:not([disabled])").waitFor({ timeout: opts.timeoutMs });
    await visitor.locator("#text").pressSequentially("在", { delay: 20 });  // the customer types (not sent)
    await agent.locator("#typing:not([hidden])").waitFor({ timeout: opts.timeoutMs });
    check("the customer's typing shows in the conversation view",
      (await agent.locator("#typing").textContent()) === "对方正在输入…", await agent.locator("#typing").textContent());
    await visitor.locator("#text").fill("");
    await agent.locator("#reply-text").fill(opts.reply);
    await agent.locator("#reply-send").click();
    const shown = await waitFrame((f) => f.type === "reply" && f.text === opts.reply, "agent reply");
    check("the agent's reply reached the visitor as the agent's message (no customer message, source agent, the name)",
      shown.message_id == null && shown.source === "agent" && shown.agent_name === opts["agent-name"],
      JSON.stringify(shown));
    await visitor.waitForFunction((t) => [...document.querySelectorAll("#log .bubble")].some((b) => b.textContent === t),
      opts.reply, { timeout: opts.timeoutMs });
    check("the visitor's page shows the agent's reply", true, opts.reply);
    result.reply = shown;
    await agent.locator("#transcript .msg.agent").filter({ hasText: opts.reply }).waitFor({ timeout: opts.timeoutMs });

    // 5. hand back; the bot answers the next message
    await agent.locator("#hand-back").click();
    await agent.locator("#handler-badge.bot").waitFor({ timeout: opts.timeoutMs });
    const questionId = await visitorSays(visitor, opts.question);
    const answer = await waitFrame((f) => f.type === "reply" && f.message_id === questionId, "answer to the question");
    check("after the hand-back the bot answers the visitor", answer.text.trim() !== "" && answer.text !== opts.reply,
      answer.text);
    result.answer = answer;
    result.tokens = frames.filter((f) => f.type === "token" && f.message_id === questionId).length;
    await agent.locator("#transcript .msg.customer").filter({ hasText: opts.question }).waitFor({ timeout: opts.timeoutMs });
    await agent.waitForFunction((q) => {
      const items = [...document.querySelectorAll("#transcript .msg")];
      const at = items.findIndex((li) => li.classList.contains("customer") && li.textContent.includes(q));
      return at >= 0 && items.slice(at + 1).some((li) => li.classList.contains("bot"));
    }, opts.question, { timeout: opts.timeoutMs });
    check("the conversation view shows the question and the bot's answer live", true, opts.question);
    result.transcript = await agent.locator("#transcript .msg").evaluateAll((items) => items.map((li) => ({
      who: li.className.replace("msg ", ""), meta: li.querySelector(".meta").textContent,
      text: li.querySelector(".text").textContent })));
    result.visitor = await bubbles(visitor);
    checkContrast("conversation view", await contrasts(agent));
    await agent.screenshot({ path: opts["conversation-shot"] });
  } catch (err) {
    check("the pages could be driven to the end", false, String(err && err.stack ? err.stack : err));
  } finally {
    check("no script errors on the pages", pageErrors.length === 0, pageErrors.join("; "));
    if (browser) await browser.close().catch(() => {});
  }
  const failed = checks.filter((c) => !c.ok);
  process.stdout.write(JSON.stringify({ ok: failed.length === 0, checks, ...result }, null, 2) + "\n");
  for (const c of failed) process.stderr.write(`FAILED: ${c.name} — ${c.detail}\n`);
  process.exit(failed.length === 0 ? 0 : 1);
}

await main();

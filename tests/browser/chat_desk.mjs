// The web chat page while a person serves the visitor: Debian's headless Chromium, driven by playwright-core.
//
//   node tests/browser/chat_desk.mjs --url http://127.0.0.1:8000/ --screenshot desk.png \
//        --promise "好的，正在为您转接人工客服，请稍候。" --agent-name 小李 --agent-text "…" --agent-text-2 "…" \
//        --csat-request "本次人工服务已结束。…" --thanks "感谢您的评价！…" [--timeout-ms 60000]
//
// The visitor types 转人工 and sees the hand-off notice, then types a question (the page sends typing frames while
// they type). The test on the other side (tests/integration/test_chat_desk_browser.py) claims the conversation and
// sends two agent messages, then hands it back. The page must show each agent message in a bubble of its own,
// marked 人工客服 <name>; then the score request with a 1-5 widget; a click on 5 posts /v1/web/csat and the widget
// turns into the thanks. After a reload the history shows the agent messages marked the same way. Every text is
// at least 4.5:1 against its background; no script errors.
//
// Prints one JSON object on stdout ({"ok", "checks", "conversation", "typing_frames", "csat_posts"}), saves a
// screenshot, exits 1 when a check failed (each failure also on stderr), 2 on bad arguments.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

import { MIN_CONTRAST, contrastVerdict, contrasts } from "./contrast.mjs";

const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
const QUESTION = "我买的鞋子尺码不对，想换一双";

function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      screenshot: { type: "string" },
      promise: { type: "string" },
      "agent-name": { type: "string" },
      "agent-text": { type: "string" },
      "agent-text-2": { type: "string" },
      "csat-request": { type: "string" },
      thanks: { type: "string" },
      "timeout-ms": { type: "string", default: "60000" },
    },
  });
  const required = ["url", "screenshot", "promise", "agent-name", "agent-text", "agent-text-2", "csat-request", "thanks"];
  const missing = required.filter((name) => !values[name]);
  if (missing.length) {
    process.stderr.write(`chat_desk.mjs: missing ${missing.map((n) => "--" + n).join(", ")}\n`);
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

const typingFrames = [];
const csatPosts = [];
function watch(page) {
  page.on("websocket", (ws) => {
    ws.on("framesent", ({ payload }) => {
      try {
        const f = JSON.parse(typeof payload === "string" ? payload : payload.toString("utf8"));
        if (f.type === "typing") typingFrames.push(Date.now());
      } catch { /* not JSON */ }
    });
  });
  page.on("request", (r) => {
    if (r.url().endsWith("/v1/web/csat")) csatPosts.push({ method: r.method(), body: r.postData() });
  });
}

// Every bubble, in order: who said it, the agent label above it (if any), its text.
async function conversation(page) {
  return page.locator("#log .row").evaluateAll((rows) => rows.map((row) => {
    const bubble = row.querySelector(".bubble");
    const label = row.querySelector(".who");
    return {
      who: row.classList.contains("me") ? "visitor" : row.classList.contains("agent") ? "agent"
        : row.classList.contains("welcome") ? "welcome" : row.classList.contains("notice") ? "notice" : "kefu",
      label: label ? label.textContent : null,
      text: bubble ? bubble.textContent : "",
      csat: row.querySelectorAll(".csat button").length,
    };
  }));
}

async function type(page, text) {
  const box = page.getByPlaceholder(/请输入您的问题/);
  await box.click();
  await box.pressSequentially(text, { delay: 30 });
  await box.press("Enter");
}

// Same computation as chat_rules.mjs: every visible text against the first opaque background behind it.

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "kefu-chromium-"));
  let context = null;
  let seen = [];
  let reloaded = [];
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
      viewport: { width: 720, height: 900 }, locale: "zh-CN",
    });
    const page = context.pages()[0] ?? await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(String(err)));
    watch(page);
    await page.goto(opts.url, { timeout: opts.timeoutMs });
    await page.locator("#status.online").waitFor({ timeout: opts.timeoutMs });

    await type(page, "转人工");
    await page.waitForFunction((promise) => [...document.querySelectorAll("#log .row .bubble")]
      .some((b) => b.textContent === promise), opts.promise, { timeout: opts.timeoutMs });
    await type(page, QUESTION);  // the test on the other side waits for this one, stored for the person

    // two agent messages, each in its own bubble, then the score request with its widget
    await page.waitForFunction(() => document.querySelectorAll("#log .row .csat button").length === 5,
      null, { timeout: opts.timeoutMs });
    seen = await conversation(page);
    const agents = seen.filter((b) => b.who === "agent");
    const label = `人工客服 ${opts["agent-name"]}`;
    check("each agent message is a bubble of its own", agents.length === 2
      && agents[0].text === opts["agent-text"] && agents[1].text === opts["agent-text-2"], JSON.stringify(agents));
    check(`agent messages are marked ${label}`, agents.length === 2 && agents.every((b) => b.label === label),
      JSON.stringify(agents.map((b) => b.label)));
    check("the bot's messages carry no agent label", seen.filter((b) => b.who === "kefu").every((b) => b.label === null),
      JSON.stringify(seen));
    const request = seen.find((b) => b.csat === 5);
    check("the score request is shown with a 1-5 widget", request && request.text === opts["csat-request"],
      JSON.stringify(request));
    check("the page sent typing frames while the visitor typed", typingFrames.length >= 1,
      `${typingFrames.length} typing frames`);

    await page.getByRole("button", { name: "5 分" }).click();
    await page.waitForFunction((thanks) => [...document.querySelectorAll("#log .csat")]
      .some((w) => w.textContent === thanks), opts.thanks, { timeout: opts.timeoutMs });
    check("a click posts the score", csatPosts.length === 1 && JSON.parse(csatPosts[0].body).score === 5,
      JSON.stringify(csatPosts));
    check("no score buttons are left after scoring", (await page.locator("#log .csat button").count()) === 0, "");
    const { ok, detail } = contrastVerdict(await contrasts(page));
    check(`every text is at least ${MIN_CONTRAST}:1 against its background`, ok, detail);
    check("no script errors on the page", pageErrors.length === 0, pageErrors.join("; "));
    await page.screenshot({ path: opts.screenshot });

    await page.reload();
    await page.locator("#status.online").waitFor({ timeout: opts.timeoutMs });
    reloaded = await conversation(page);
    const again = reloaded.filter((b) => b.who === "agent");
    check("after a reload the history shows the agent messages, marked", again.length === 2
      && again.every((b) => b.label === label) && again[0].text === opts["agent-text"], JSON.stringify(again));
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
  process.stdout.write(JSON.stringify({ ok: failed.length === 0, checks, conversation: seen, reloaded,
                                        typing_frames: typingFrames.length, csat_posts: csatPosts }, null, 2) + "\n");
  for (const c of failed) process.stderr.write(`FAILED: ${c.name} — ${c.detail}\n`);
  process.exit(failed.length === 0 ? 0 : 1);
}

await main();

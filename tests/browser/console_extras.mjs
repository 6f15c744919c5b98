// The console extras as an admin uses them: Debian's headless Chromium, driven by playwright-core.
//
//   node tests/browser/console_extras.mjs --url http://127.0.0.1:8000 --username boss --password "…" \
//        --conversation 1 --note "…" --tag VIP --shortcut refund --canned-text "…" --faq-answer "…" \
//        --kb-answer "…" --kb-shot docs/console-kb.png [--conversation-shot conversation.png] [--timeout-ms 60000]
//
// 1. Logs into /console, saves the canned reply /--shortcut (--canned-text) on /console/kb, and opens conversation
//    --conversation (a customer question the test stored).
// 2. Adds the note --note in 内部备注 and the tag --tag in 标签; both show in their panels.
// 3. Claims the conversation (接管会话), types "/" and the first letters of --shortcut in the composer: the canned
//    replies dropdown offers /--shortcut; Enter inserts its text (--canned-text) in place of "/…"; 发送 sends it.
// 4. On the agent's reply now in the transcript, 设为常见问题 opens a form prefilled with the customer's question and
//    the reply; the answer is replaced by --faq-answer and saved: the button says 已设为常见问题, after a reload too.
// 5. Opens /console/kb, uploads a Markdown file (listed, its passage shown) and deletes it; views the FAQ sheet (the first CSV one), edits its first entry's answer to
//    --kb-answer and saves; the list shows the new answer. Screenshot of that page (--kb-shot).
// 6. Opens /console/reports: the table has the bot's line.
// Around it: every text on the three pages is at least 4.5:1 against its background, and no script error.
//
// Prints one JSON object ({"ok", "checks", "faq_question", "reply_text", …}) and exits 1 when a check failed, 2 on
// bad arguments.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
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
const REQUIRED = ["url", "username", "password", "conversation", "note", "tag", "shortcut", "canned-text", "faq-answer",
                  "kb-answer", "kb-shot"];

function options() {
  const { values } = parseArgs({
    options: Object.fromEntries([...REQUIRED.map((n) => [n, { type: "string" }]),
                                 ["timeout-ms", { type: "string", default: "60000" }],
                                 ["conversation-shot", { type: "string" }]]),
  });
  const missing = REQUIRED.filter((name) => !values[name]);
  if (missing.length) {
    process.stderr.write(`console_extras.mjs: missing ${missing.map((n) => "--" + n).join(", ")}\n`);
    process.exit(2);
  }
  return { ...values, url: values.url.replace(/\/$/, ""), timeoutMs: Number(values["timeout-ms"]) };
}

const opts = options();
const checks = [];
const extra = {};
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), detail });
  return Boolean(ok);
}

// Every visible text against the first opaque background behind it (WCAG 2 contrast ratio), as console_desk.mjs.
// A value a render forgot to leave out shows as the words null or undefined
async function checkNoPlaceholders(page, where) {
  const text = await page.locator("main").innerText();
  check(`${where}: no "null" or "undefined" shown`, !/null|undefined|NaN/.test(text), text.slice(0, 200));
}
function checkContrast(where, found) {
  const { ok, detail } = contrastVerdict(found);
  check(`${where}: every text is at least ${MIN_CONTRAST}:1 against its background`, ok, detail);
}

async function login(page) {
  await page.goto(`${opts.url}/console/login`, { timeout: opts.timeoutMs });
  await page.locator("#username").fill(opts.username);
  await page.locator("#password").fill(opts.password);
  await Promise.all([page.waitForURL(`${opts.url}/console`, { timeout: opts.timeoutMs }),
                     page.locator("#login-submit").click()]);
}

async function cannedReply(page) {
  const t = { timeout: opts.timeoutMs };
  await page.goto(`${opts.url}/console/kb`, t);
  await page.locator("#canned-shortcut").fill(opts.shortcut);
  await page.locator("#canned-text").fill(opts["canned-text"]);
  await page.locator("#canned-save").click();
  const row = page.locator(`#canned-rows tr[data-shortcut="${opts.shortcut}"]`);
  await row.waitFor(t);
  check("the canned reply saved on /console/kb is listed", (await row.textContent()).includes(opts["canned-text"]),
    opts.shortcut);
}

async function conversationView(page) {
  const t = { timeout: opts.timeoutMs };
  await page.goto(`${opts.url}/console/conversations/${opts.conversation}`, t);
  await page.locator("#transcript li.msg.customer").first().waitFor(t);

  // a note: shown in the panel (GET …/notes again), never as a message of the transcript
  await page.locator("#note-text").fill(opts.note);
  await page.locator("#note-add").click();
  await page.locator("#notes li", { hasText: opts.note }).waitFor(t);
  check("the note shows in 内部备注", true, opts.note);

  // a tag
  await page.locator("#tag-input").fill(opts.tag);
  await page.locator("#tag-add").click();
  await page.locator("#tags .tag", { hasText: opts.tag }).waitFor(t);
  check("the tag shows in 标签", true, opts.tag);

  // take the conversation, then a canned reply by its shortcut
  await page.locator("#claim").click();
  await page.waitForFunction(() => !document.getElementById("reply-text").disabled, null, t);
  const box = page.locator("#reply-text");
  await box.click();
  await box.pressSequentially("/" + opts.shortcut.slice(0, 3));
  const option = page.locator(`#canned-menu li[data-shortcut="${opts.shortcut}"]`);
  await option.waitFor(t);
  check("typing / and a shortcut's first letters offers the canned reply", await option.isVisible(), opts.shortcut);
  await box.press("Enter");
  const inserted = await box.inputValue();
  extra.inserted = inserted;
  check("Enter inserts the canned reply's text in place of /shortcut", inserted === opts["canned-text"], inserted);
  check("the dropdown closes", (await page.locator("#canned-menu").count()) === 0, "closed");
  await page.locator("#reply-send").click();
  const mine = page.locator("#transcript li.msg.agent", { hasText: opts["canned-text"] });
  await mine.waitFor(t);
  extra.reply_text = (await mine.locator(".text").textContent()).trim();
  const notes = await page.locator("#transcript").textContent();
  check("the note is not in the transcript", !notes.includes(opts.note), "transcript has no note");

  // make the agent's reply an FAQ
  const make = mine.locator("button.make-faq");
  await make.waitFor(t);
  await make.click();
  await page.locator("#faq-form").waitFor(t);
  extra.faq_question = await page.locator("#faq-question").inputValue();
  extra.faq_prefilled_answer = await page.locator("#faq-answer").inputValue();
  check("the form is prefilled with the reply", extra.faq_prefilled_answer === opts["canned-text"],
    extra.faq_prefilled_answer);
  await page.locator("#faq-answer").fill(opts["faq-answer"]);
  await page.locator("#faq-save").click();
  await page.locator("#faq-form").waitFor({ state: "detached", timeout: opts.timeoutMs });
  const label = await page.locator(`#transcript button.make-faq[data-reply-id]`, { hasText: "已设为常见问题" }).count();
  check("the reply is marked 已设为常见问题", label === 1, `${label} marked`);
  await page.reload(t);
  const kept = page.locator("#transcript li.msg.agent button.make-faq", { hasText: "已设为常见问题" });
  await kept.waitFor(t);
  check("after a reload the reply is still marked 已设为常见问题", await kept.isDisabled(), "disabled");
  await checkNoPlaceholders(page, "conversation view");
  if (opts["conversation-shot"]) await page.screenshot({ path: opts["conversation-shot"] });
  checkContrast("conversation view", await contrasts(page));
}

async function knowledgeBase(page) {
  const t = { timeout: opts.timeoutMs };
  await page.goto(`${opts.url}/console/kb`, t);

  // upload a Markdown file, see its passage, delete it (the confirm dialog is accepted)
  const folder = mkdtempSync(join(tmpdir(), "kefu-kb-"));
  const file = join(folder, "退货政策.md");
  writeFileSync(file, "# 退货政策\n\n签收后 7 天内可无理由退货，运费由买家承担。\n");
  await page.locator("#kb-file").setInputFiles(file);
  await page.locator("#kb-upload button[type=submit]").click();
  const uploaded = page.locator("#kb-documents tr", { hasText: "退货政策.md" });
  await uploaded.waitFor(t);
  await page.locator(".passage-list li", { hasText: "无理由退货" }).waitFor(t);
  check("an uploaded document is listed with its passage", true, await page.locator("#kb-message").textContent());
  await uploaded.locator("button.delete").click();
  await uploaded.waitFor({ state: "detached", timeout: opts.timeoutMs });
  check("a deleted document leaves the list", true, "退货政策.md");
  rmSync(folder, { recursive: true, force: true });

  const sheet = page.locator("#kb-documents tr", { hasText: "问答表 CSV" }).first();
  await sheet.waitFor(t);
  await sheet.locator("button.view").click();
  const first = page.locator("#faq-list > li").first();
  await first.waitFor(t);
  extra.kb_question = (await first.locator(".q").textContent()).trim();
  await first.locator("button.faq-edit").click();
  await first.locator("textarea.faq-a").fill(opts["kb-answer"]);
  await first.locator("button.faq-save").click();
  await page.locator("#faq-list > li .a", { hasText: opts["kb-answer"] }).first().waitFor(t);
  const message = await page.locator("#kb-message").textContent();
  check("the edited FAQ entry shows its new answer", message.includes("已保存问答"), message);
  await checkNoPlaceholders(page, "knowledge base");
  checkContrast("knowledge base", await contrasts(page));
  await page.screenshot({ path: opts["kb-shot"] });
}

async function reports(page) {
  const t = { timeout: opts.timeoutMs };
  await page.goto(`${opts.url}/console/reports`, t);
  const bot = page.locator('#csat-rows tr[data-agent-id="bot"]');
  await bot.waitFor(t);
  extra.report_bot = (await bot.textContent()).trim();
  check("the report has the bot's line", extra.report_bot.startsWith("机器人"), extra.report_bot);
  await checkNoPlaceholders(page, "satisfaction report");
  checkContrast("satisfaction report", await contrasts(page));
}

async function main() {
  let browser;
  let page;
  const errors = [];
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "zh-CN" });
    page = await context.newPage();
    page.on("pageerror", (err) => errors.push(String(err)));
    page.on("console", (m) => { if (m.type() === "error") process.stderr.write(`console: ${m.text()}\n`); });
    page.on("response", (r) => { if (r.status() >= 400) process.stderr.write(`HTTP ${r.status()} ${r.url()}\n`); });
    page.on("dialog", (d) => d.accept());
    await login(page);
    await cannedReply(page);
    await conversationView(page);
    await knowledgeBase(page);
    await reports(page);
  } catch (err) {
    check("the pages could be driven to the end", false, String(err && err.stack ? err.stack : err));
    // for the diagnosis: whether the live stream (whose "ready" loads the conversation) was connected
    if (page) extra.live = await page.locator("#live").textContent({ timeout: 1000 }).catch(() => null);
  } finally {
    check("no script errors", errors.length === 0, errors.join("; "));
    if (browser) await browser.close().catch(() => {});
  }
  const failed = checks.filter((c) => !c.ok);
  process.stdout.write(JSON.stringify({ ok: failed.length === 0, checks, ...extra }, null, 2) + "\n");
  for (const c of failed) process.stderr.write(`FAILED: ${c.name} — ${c.detail}\n`);
  process.exit(failed.length === 0 ? 0 : 1);
}

main();

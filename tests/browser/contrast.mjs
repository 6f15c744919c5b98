// Shared by the browser tests: every visible text's WCAG 2 contrast ratio against the first opaque background
// behind it (text nodes, and the value or placeholder of inputs; options of a closed select are not shown).
export const MIN_CONTRAST = 4.5;

export async function contrasts(page) {
  return page.evaluate(() => {
    const rgba = (s) => { const m = s.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
    const lum = ([r, g, b]) => {
      const c = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
      return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    };
    const over = (top, under) => top.slice(0, 3).map((v, i) => v * top[3] + under[i] * (1 - top[3])).concat(1);
    const background = (el) => {
      const layers = [];
      for (let e = el; e; e = e.parentElement) {
        const c = rgba(getComputedStyle(e).backgroundColor);
        if (c[3] > 0) layers.push(c);
        if (c[3] >= 1) break;
      }
      return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255, 1]);
    };
    const out = [];
    for (const el of document.querySelectorAll("body *")) {
      if (["SCRIPT", "STYLE", "OPTION"].includes(el.tagName) || el.getClientRects().length === 0) continue;
      const own = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
      const text = ["TEXTAREA", "INPUT"].includes(el.tagName) ? (el.value || el.placeholder || "").trim() : own;
      if (!text) continue;
      const bg = background(el);
      const fg = over(rgba(getComputedStyle(el).color), bg);
      const [a, b] = [lum(fg), lum(bg)];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      out.push({ element: el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className ? "." + el.className : ""),
                 text: text.slice(0, 20), ratio: Math.round(ratio * 100) / 100 });
    }
    return out;
  });
}

// {ok, detail} for a check(): at least one text found and none below MIN_CONTRAST (detail lists the low ones).
export function contrastVerdict(found) {
  const low = found.filter((f) => f.ratio < MIN_CONTRAST);
  return {
    ok: found.length > 0 && low.length === 0,
    detail: low.length ? JSON.stringify(low) : `${found.length} texts, lowest ${Math.min(...found.map((f) => f.ratio))}`,
  };
}

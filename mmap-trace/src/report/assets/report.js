"use strict";
const D = JSON.parse(document.getElementById("report-data").textContent);
const tip = document.getElementById("tip");
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
function eventRow(id, role) {
  const e = D.events[id];
  const err = e.error ? ` <span class="err">${esc(e.error)}</span>` : "";
  return `<tr><td class="r">${esc(role)}</td><td>${esc(e.t)}</td><td class="d"><b>${esc(e.probe)}</b>${err} ${esc(e.detail)}</td></tr>`;
}
function vmaTip(v) {
  let h = `<div class="h">${esc(v.kind)} ${esc(v.prot)} · ${esc(v.size)}</div><div class="mono">${esc(v.range)}</div>`;
  if (v.file) h += `<div>file: <span class="mono">${esc(v.file)}</span></div>`;
  if (v.vm_flags) h += `<div>vm_flags: <span class="mono">${esc(v.vm_flags)}</span></div>`;
  for (const p of v.pfns) h += `<div>PFNs: <span class="mono">${esc(p)}</span></div>`;
  if (v.driver) h += `<div class="err">mapped by the mmtrace driver</div>`;
  if (v.mismatch) h += `<div class="err">verify reported a mismatch here</div>`;
  if (v.faults > 0) h += `<div class="faults">page faults: ${v.faults} (${v.faulted_in} made a page resident, ${v.major} needed I/O), first touch ${esc(v.first_touch)}</div>`;
  h += `<div>${esc(v.span)}</div><table>`;
  // The first event (what made the mapping), then the latest ones.
  const t = v.touches, rows = t.length > 12 ? [t[0], ...t.slice(-11)] : t;
  const hidden = v.elided + (t.length - rows.length);
  rows.forEach(([id, role], k) => {
    h += eventRow(id, role);
    if (k === 0 && hidden > 0) h += `<tr><td></td><td colspan="2">… ${hidden} more events …</td></tr>`;
  });
  h += "</table>";
  // trace --stacks: the call stack that made the mapping (innermost first).
  if (v.stack && v.stack.length) h += `<div class="h">created by</div><div class="mono stack">${v.stack.map(esc).join("<br>")}</div>`;
  return h;
}
// For tests and curious readers: how many bars the page has and how many have a size on
// screen (`chromium --dump-dom` shows these attributes).
{
  const bars = [...document.querySelectorAll("rect.vma")];
  document.body.dataset.vmaBars = bars.length;
  document.body.dataset.renderedBars = bars.filter(r => { const b = r.getBoundingClientRect(); return b.width > 0 && b.height > 0; }).length;
}
let lit = null;
document.addEventListener("mousemove", ev => {
  const el = ev.target.closest ? ev.target.closest("[data-v],[data-e],[data-m]") : null;
  if (lit && lit !== el) { lit.classList.remove("hl"); lit = null; }
  if (!el) { tip.style.display = "none"; return; }
  if (el.dataset.v !== undefined) { tip.innerHTML = vmaTip(D.vmas[+el.dataset.v]); el.classList.add("hl"); lit = el; }
  else if (el.dataset.e !== undefined) tip.innerHTML = `<table>${eventRow(+el.dataset.e, "event")}</table>`;
  else { const m = D.mismatches[+el.dataset.m]; tip.innerHTML = `<div class="h err">verify mismatch (line ${m.line})</div><div class="mono">${esc(m.detail)}</div>`; }
  tip.style.display = "block";
  const w = tip.offsetWidth, h = tip.offsetHeight;
  let x = ev.clientX + 14, y = ev.clientY + 14;
  if (x + w > innerWidth - 4) x = Math.max(4, ev.clientX - w - 14);
  if (y + h > innerHeight - 4) y = Math.max(4, ev.clientY - h - 14);
  tip.style.left = x + "px"; tip.style.top = y + "px";
});
// For tests (a browser without a mouse): `#hover-vma=N` moves the pointer onto bar N once
// the page is drawn, through the same handler as a real hover; `chromium --dump-dom`
// then shows the tip.
{
  const m = /^#hover-vma=(\d+)$/.exec(location.hash);
  const el = m && document.querySelector(`rect.vma[data-v="${m[1]}"]`);
  if (el) {
    const b = el.getBoundingClientRect();
    el.dispatchEvent(new MouseEvent("mousemove", {bubbles: true, clientX: b.x + 1, clientY: b.y + 1}));
  }
}

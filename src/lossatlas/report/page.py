"""The atlas page: one ``index.html`` with a summary card and one section per measurement.

It opens without a network: images are files beside it (relative links), the interactive plots
are plotly figure specs inlined in the page and drawn by one local copy of plotly.js
(``plotly.min.js`` beside the page, written once).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lossatlas.store import atomic

__all__ = ["write_page"]

#: Summary card entries: key, label, format.
CARD = (
    ("train_acc", "train accuracy", "pct"), ("test_acc", "test accuracy", "pct"),
    ("lambda_max", "λ<sub>max</sub> (Hessian)", "g"), ("lambda_min", "λ<sub>min</sub>", "g"),
    ("trace", "trace H", "g"), ("stationary_points", "stationary points (Gaussian, mean)", "g"),
    ("fitting_error", "Fitting Error, trajectory plane", "g"),
    ("fitting_error_random", "Fitting Error, random plane", "g"),
    ("mc", "mode connectivity mc (%)", "+g"), ("cka", "CKA to run B", "g"),
    ("l2", "ℓ2 to run B", "g"), ("phase", "phase (Yang et al.)", "s"),
)

#: Summary card entries shown only when their section computed them.
CARD_IF_PRESENT = (
    ("lambda_max_final", "λ<sub>max</sub> at the last tracked step", "g"),
    ("sharpness_threshold", "its stability threshold (2/η, (2+2β)/η)", "g"),
    ("barrier_unaligned", "line barrier (train error %), unaligned", "g"),
    ("barrier_aligned", "line barrier (train error %), aligned", "g"),
    ("mc_aligned", "mc after alignment (%)", "+g"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9;line-height:1.45}
header{background:#1f3b57;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;opacity:.85;font-size:14px}
main{max-width:1200px;margin:0 auto;padding:16px 32px 48px}
nav{font-size:13px;margin:8px 0 16px} nav a{margin-right:12px;color:#1f5f99}
.card{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px;
background:#fff;border:1px solid #dde;border-radius:8px;padding:14px;margin-bottom:18px}
.card div{padding:6px 8px;border-left:3px solid #1f5f99}
.card b{display:block;font-size:20px} .card span{font-size:12px;color:#555}
section{background:#fff;border:1px solid #dde;border-radius:8px;padding:14px 20px;
margin:18px 0}
section h2{margin:0 0 2px;font-size:20px} .paper{font-size:13px;color:#666;margin:0 0 8px}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;max-width:100%} figure img{max-width:560px;width:100%;border:1px solid #eee}
figure.wide img{max-width:100%}
figcaption{font-size:12px;color:#555}
.plot{width:560px;height:460px;border:1px solid #eee}
.verdict{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:8px 0}
.failed{background:#fde8e8;border-left:4px solid #d33;padding:6px 10px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f0f2f5}
pre{background:#f3f4f6;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
details{font-size:12px;color:#444}
.nums{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px}
.nums span{background:#f3f6fa;padding:2px 6px;border-radius:4px} .nums i{color:#555}
.status{font-size:12px;color:#888}
"""


def _fmt(value: Any, how: str = "g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if how == "pct" and isinstance(value, (int, float)):
        return f"{100 * value:.1f} %"
    if how == "+g" and isinstance(value, (int, float)):
        return f"{value:+.3g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _scalars(numbers: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """Flat ``(name, value)`` rows of a section's numbers (lists shown inline)."""
    rows = []
    for k, v in numbers.items():
        if isinstance(v, Mapping):
            rows += _scalars(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)):
            rows.append((prefix + k, ", ".join(_fmt(x) for x in v)))
        else:
            rows.append((prefix + k, _fmt(v)))
    return rows


def _table(rows: Sequence[Sequence[str]], header: bool = True) -> str:
    if not rows:
        return ""
    out = ["<table>"]
    for i, r in enumerate(rows):
        tag = "th" if header and i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _png_width(path: Path) -> int:
    """A PNG's width in pixels from its header (0 when it is not a PNG): multi-panel figures
    get the page's full width, single panels half of it."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return 0
    return int.from_bytes(head[16:20], "big") if head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _figures(doc: Mapping, out: Path, plots: list[tuple[str, str]]) -> str:
    parts = []
    for k, f in enumerate(doc.get("figures", [])):
        title = html.escape(f.get("title", ""))
        if f.get("interactive"):
            pid = f"plot-{doc['name']}-{k}"
            plots.append((pid, (out / f["path"]).read_text()))
            parts.append(f'<figure><div class="plot" id="{pid}"></div>'
                         f"<figcaption>{title}</figcaption></figure>")
        else:
            src = html.escape(f["path"])
            wide = ' class="wide"' if _png_width(out / f["path"]) > 1100 else ""
            parts.append(f'<figure{wide}><a href="{src}"><img src="{src}" alt="{title}" '
                         f'loading="eager"></a><figcaption>{title}</figcaption></figure>')
    return f'<div class="figs">{"".join(parts)}</div>' if parts else ""


def _section(doc: Mapping, out: Path, plots: list[tuple[str, str]]) -> str:
    name, title = doc["name"], html.escape(doc["title"])
    head = (f'<section id="{name}"><h2>{title}</h2>'
            + (f'<p class="paper">{html.escape(doc["paper"])}</p>' if doc.get("paper") else ""))
    status = doc.get("status")
    if status == "failed":
        return (head + f'<p class="failed">This section failed: '
                f'{html.escape(doc.get("error", ""))}</p></section>')
    if status == "skipped":
        return head + '<p class="status">Not computed in this atlas.</p></section>'
    body = [_figures(doc, out, plots)]
    body += [f"<p>{p}</p>" for p in doc.get("caption", [])]
    if doc.get("verdict"):
        body.append(f'<p class="verdict"><b>Verdict:</b> {html.escape(doc["verdict"])}</p>')
    body.append(_table(doc.get("table", [])))
    nums = _scalars(doc.get("numbers", {}))
    if nums:
        items = "".join(f"<span><i>{html.escape(k)}</i> {v}</span>" for k, v in nums)
        body.append(f'<p><b>Key numbers</b></p><div class="nums">{items}</div>')
    if doc.get("command"):
        cmds = "\n".join(html.escape(c) for c in doc["command"])
        body.append(f"<p><b>Recompute it:</b></p><pre>{cmds}</pre>")
    prov = {**doc.get("provenance", {}), "options": doc.get("options"),
            "files": doc.get("files"), "cache key": doc.get("key")}
    body.append("<details><summary>Provenance</summary><pre>"
                + html.escape(json.dumps(prov, indent=1, default=str)) + "</pre></details>")
    secs = doc.get("seconds")
    body.append(f'<p class="status">{html.escape(status or "")}; computed in '
                f'{_fmt(secs)} s</p>' if secs is not None else "")
    return head + "".join(body) + "</section>"


def _plotly_js(out: Path) -> str:
    """Write ``plotly.min.js`` beside the page once (the installed plotly's own copy)."""
    from plotly.offline import get_plotlyjs

    path = out / "plotly.min.js"
    js = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(js.encode()):
        path.write_text(js)
    return path.name


def write_page(doc: Mapping, sections: Sequence[Mapping], out: Path) -> Path:
    """Write ``out/index.html`` from the atlas document and the section documents."""
    plots: list[tuple[str, str]] = []
    s = doc["summary"]
    card = "".join(f"<div><b>{_fmt(s.get(k), f)}</b><span>{label}</span></div>"
                   for k, label, f in CARD + tuple(c for c in CARD_IF_PRESENT
                                                   if s.get(c[0]) is not None))
    r = doc["recipe"]
    model = html.escape(str(r["model"]).rsplit("/", 1)[-1])
    nav = "".join(f'<a href="#{d["name"]}">{html.escape(d["title"])}</a>' for d in sections)
    body = "".join(_section(d, out, plots) for d in sections)
    js = _plotly_js(out) if plots else None
    scripts = ""
    if plots:
        calls = "".join(
            f"draw({json.dumps(pid)},{spec});" for pid, spec in plots)
        # plotly.js (~5 MB) loads after the page has shown its text and images, then draws
        # the interactive plots: the page is readable at once instead of after the parse
        scripts = ("<script>"
                   "function draw(id,spec){var el=document.getElementById(id);"
                   "Plotly.newPlot(el,spec.data,Object.assign({},spec.layout,"
                   "{margin:{l:0,r:0,t:40,b:0}}),{responsive:true,displaylogo:false});}"
                   f"function drawAll(){{{calls}}}"
                   "window.addEventListener('load',function(){"
                   "var s=document.createElement('script');"
                   f"s.src={json.dumps(js)};s.onload=drawAll;document.body.appendChild(s);}});"
                   "</script>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>lossatlas: {model} on {html.escape(str(r['data']))}</title>
<style>{CSS}</style></head><body>
<header><h1>Loss landscape atlas: {model} on {html.escape(str(r['data']))}</h1>
<p>run {html.escape(doc['run'])} · seed {r['seed']} · lossatlas {doc['lossatlas_version']} ·
{html.escape(doc['created'])}{' · quick sizes' if doc.get('quick') else ''}</p></header>
<main><nav>{nav}</nav>
<div class="card" id="summary">{card}</div>
{body}
<p class="status">Numbers: <a href="atlas.json">atlas.json</a>. Written by
<code>lossatlas atlas</code>; rerun it to update (unchanged sections are read back).</p>
</main>{scripts}</body></html>
"""
    path = out / "index.html"
    return atomic.write_text(path, page)

"""The atlas's budgets: the default atlas (training, run B, the small sweep and every section)
from scratch, an unchanged rerun, and the page in headless Chromium; beside them, the baseline
a user would otherwise type: the plain sequence of ``lossatlas`` commands that compute the same
sections (the ``command`` lines the atlas records, each a fresh process, writing elsewhere).

    .venv/bin/python benchmarks/atlas.py            # the default atlas (minutes)
    .venv/bin/python benchmarks/atlas.py --quick    # small sizes, a smoke run

Budgets (issue 12): default atlas <= 180 s on two cores, training included; unchanged rerun
<= 10 s; the page opens with every image and plot drawn in < 3 s and weighs < 10 MB. The cores
are shared with other work: the CPU seconds (user + system of this process and its children)
are printed next to the wall time, and the wall time of an idle 2-core machine is bounded by
them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LOSSATLAS_QUIET", "1")


def cpu_seconds() -> float:
    """User + system seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    w, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - w, cpu_seconds() - c


def page_open_seconds(page: Path) -> tuple[float, float] | None:
    """Seconds from navigation until the page is shown with every image loaded, and until
    every interactive plot is drawn too (None without Playwright / Chromium)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).exists():
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--use-gl=swiftshader",
                                          "--enable-unsafe-swiftshader"])
        try:
            tab = browser.new_page()
            t0 = time.perf_counter()
            tab.goto(page.resolve().as_uri(), wait_until="load")
            tab.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)",
                timeout=60_000)
            shown = time.perf_counter() - t0
            tab.wait_for_function(
                "() => [...document.querySelectorAll('.plot')].every(d => d._fullData)",
                timeout=60_000)
            return shown, time.perf_counter() - t0
        finally:
            browser.close()


def cli_sequence(doc: dict, atlas_dir: Path, work: Path) -> list[str]:
    """The commands of the baseline: train the run and run B, run the sweep, then every
    section's recorded command, with the atlas folder's outputs sent to ``work``."""
    r = doc["recipe"]
    from lossatlas.report.runspec import Recipe

    recipe = Recipe(r["model"], r["model_opts"], r["data"], r["data_opts"], r["train"], r["seed"])
    t = r["train"]
    train = (f"lossatlas train {recipe.flags()} --epochs {t['epochs']} --lr {t['lr']} "
             f"--momentum {t['momentum']} --weight-decay {t['weight_decay']} --batch-size "
             f"{t['batch_size']} --no-figure --overwrite")
    cmds = [f"{train} --seed {r['seed']} --out {work / 'run'}",
            f"{train} --seed {r['seed'] + 1} --out {work / 'run_b'}"]
    if doc.get("sweep"):
        spec = json.loads((Path(doc["sweep"]) / "sweep.json").read_text())
        (work / "sweep.json").write_text(json.dumps(spec))
        cmds.append(f"python -c \"import json, lossatlas as la; la.sweep.run(json.load(open("
                    f"'{work / 'sweep.json'}')), '{work / 'sweep'}', progress=False)\"")
    for s in doc["sections"]:
        for c in s.get("command", []):
            if doc.get("sweep"):
                c = c.replace(str(Path(doc["sweep"]).resolve()), str(work / "sweep"))
                c = c.replace(doc["sweep"], str(work / "sweep"))
            c = (c.replace(str(atlas_dir / "run_b"), str(work / "run_b"))
                 .replace(doc["run"], str(work / "run"))
                 .replace(str(atlas_dir), str(work)))
            cmds.append(c)
    return cmds


def run_sequence(cmds: list[str], work: Path) -> tuple[float, float, list[str]]:
    failed = []
    w, c = time.perf_counter(), cpu_seconds()
    for cmd in cmds:
        argv = shlex.split(cmd)
        for i, a in enumerate(argv):  # the output folders the commands expect
            if a in ("--out", "-o") and i + 1 < len(argv):
                out = Path(argv[i + 1])
                (out if out.suffix == "" else out.parent).mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).parent
        argv[0] = str(exe / argv[0]) if (exe / argv[0]).exists() else argv[0]
        if argv[0].endswith("python"):
            argv[0] = sys.executable
        res = subprocess.run(argv, capture_output=True, text=True, cwd=work)
        if res.returncode != 0:
            failed.append(f"{cmd}\n    -> {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - w, cpu_seconds() - c, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--keep", type=Path, help="write the atlas here instead of a temp folder")
    args = ap.parse_args()
    from lossatlas.report.demo import run_demo

    tmp = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    out = args.keep or tmp / "atlas"
    res, wall, cpu = timed(lambda: run_demo(out, quick=args.quick, progress=False))
    _, wall2, cpu2 = timed(lambda: run_demo(out, quick=args.quick, progress=False))
    size = sum(p.stat().st_size for p in out.rglob("*")
               if p.is_file() and p.suffix in (".html", ".png", ".js", ".json")
               and "run" not in p.relative_to(out).parts[0])
    opened = page_open_seconds(res.page)
    work = tmp / "cli"
    work.mkdir()
    cmds = cli_sequence(res.doc, out.resolve(), work)
    cwall, ccpu, failed = run_sequence(cmds, work)
    print(f"lossatlas atlas benchmark ({'quick' if args.quick else 'default'} sizes), "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'what':<46}{'wall s':>9}{'CPU s':>9}  budget")
    print(f"{'atlas from scratch (train, run B, sweep, all)':<46}{wall:9.1f}{cpu:9.1f}  <= 180")
    print(f"{'atlas rerun, nothing changed':<46}{wall2:9.1f}{cpu2:9.1f}  <= 10")
    print(f"{f'plain CLI sequence ({len(cmds)} commands)':<46}{cwall:9.1f}{ccpu:9.1f}  "
          f"(ratio atlas/CLI: wall {wall / cwall:.2f}, CPU {cpu / ccpu:.2f})")
    shown = ("n/a (no Chromium/Playwright)" if opened is None else
             f"shown with every image in {opened[0]:.2f} s, every plot drawn at {opened[1]:.2f} s")
    print(f"page: {shown} (budget < 3 s); {size / 1e6:.1f} MB with plotly.js (budget < 10 MB)")
    times = [f"{s['name']} {s['seconds']:.1f}" for s in res.doc["sections"]
             if s.get("seconds") is not None]
    print(f"section seconds (first run): {', '.join(times)}")
    for f in failed:
        print(f"CLI command failed: {f}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

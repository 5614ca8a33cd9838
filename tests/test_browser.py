"""The interactive surface opens in a real headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``; never a browser download) without console errors."""

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lossatlas as la

CHROMIUM = os.environ.get("LOSSATLAS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # a headless Chromium starts (about 7 s)
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=(
        f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install -y chromium; "
        "`make test` does) to run the browser test")),
]


def test_surface_html_renders_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    os.environ.setdefault("LOSSATLAS_QUIET", "1")
    torch.manual_seed(0)
    X, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    obj = la.Objective(net, (X, y))
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = la.surface(obj, d1, d2, resolution=9)
    path = la.plot.to_html(s, tmp_path / "surface.html")
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_selector(".plotly .main-svg", timeout=30_000)
            data = page.evaluate(
                "() => { const g = document.querySelector('.js-plotly-plot');"
                " const t = g._fullData[0];"
                " return {type: t.type, nz: t.z.length, nx: t.z[0].length,"
                " canvas: !!g.querySelector('canvas')}; }")
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith("file:") or u.startswith("data:") for u in requests), requests
    assert data == {"type": "surface", "nz": 9, "nx": 9, "canvas": True}

"""Block-wise Hessian spectra (Zhang et al. 2024): block types from the pattern table, top
eigenvalues against the exact Hessian blocks, JS distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la


class _TinyTransformer(nn.Module):
    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        a = torch.softmax(self.q_proj(x) @ self.k_proj(x).transpose(1, 2) / 8**0.5, -1)
        x = self.norm(x + self.o_proj(a @ self.v_proj(x)))
        x = x + self.mlp(x)
        return self.lm_head(x[:, -1])


def test_types_from_the_pattern_table_and_the_user_extension():
    blocks = la.hessian.blocks_of(_TinyTransformer())
    got = {b.name: b.type for b in blocks}
    assert got == {"embed_tokens": "embedding", "q_proj": "attention q/k",
                   "k_proj": "attention q/k", "v_proj": "attention v/o",
                   "o_proj": "attention v/o", "norm": "norm", "mlp.0": "mlp", "mlp.2": "mlp",
                   "lm_head": "output"}
    mine = la.hessian.blocks_of(_TinyTransformer(), types={"up": ["mlp.0"]})
    assert {b.name: b.type for b in mine}["mlp.0"] == "up"
    assert sum(b.size for b in blocks) == sum(p.numel() for p in _TinyTransformer().parameters())


@pytest.mark.slow
def test_block_top_eigenvalues_equal_the_exact_hessian_blocks():
    torch.manual_seed(0)
    model = _TinyTransformer().double()
    ids = torch.randint(0, 11, (24, 5))
    y = torch.randint(0, 11, (24,))
    obj = la.Objective(model, (ids, y))
    res = la.hessian.block_spectra(obj, steps=20, tol=1e-8)
    theta = la.params.of(model)
    names = list(theta)

    def f(flat):
        p = la.params.unflatten(flat, theta)
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (ids,)), y)

    H = torch.func.hessian(f)(la.params.flatten(theta)).numpy()
    offsets = np.cumsum([0] + [theta[n].numel() for n in names])
    where = {n: (offsets[i], offsets[i + 1]) for i, n in enumerate(names)}
    blocks = la.hessian.blocks_of(model)
    for b, lam in zip(blocks, res.lambda_max):
        idx = np.concatenate([np.arange(*where[p]) for p in b.params])
        exact = np.linalg.eigvalsh(H[np.ix_(idx, idx)])[-1]
        assert np.isclose(lam, exact, rtol=1e-6, atol=1e-10), (b.name, lam, exact)
    assert res.names == [b.name for b in blocks]
    assert np.allclose(np.trapezoid(res.density, res.grid, axis=1), 1.0)
    js = res.js
    assert np.allclose(js, js.T) and np.allclose(np.diag(js), 0) and (js <= 1 + 1e-12).all()
    assert (js[~np.eye(len(js), dtype=bool)] > 0).all()
    rows = {r["type"]: r for r in res.by_type()}
    assert rows["attention q/k"]["blocks"] == 2
    assert np.isclose(rows["attention q/k"]["lambda_max"], res.lambda_max[1:3].max())
    assert "attention v/o" in res.table()


def test_block_figure_draws_every_block_and_the_distances():
    from lossatlas.plot.blocks import block_densities

    torch.manual_seed(0)
    model = _TinyTransformer()
    ids, y = torch.randint(0, 11, (16, 5)), torch.randint(0, 11, (16,))
    res = la.hessian.block_spectra(la.Objective(model, (ids, y)), steps=8)
    fig = block_densities(res)
    ax, ax_js = fig.axes[0], fig.axes[1]
    assert len(ax.lines) == len(res.names) == 9
    colors = {t: ax.lines[i].get_color() for i, t in enumerate(res.types)}
    assert len(set(colors.values())) == len(set(res.types))  # one colour per block type
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(dict.fromkeys(res.types))
    assert np.array_equal(ax_js.images[0].get_array(), res.js)


def test_js_distance_equals_scipy_and_stays_finite_on_underflowing_tails():
    from scipy.spatial.distance import jensenshannon

    from lossatlas.measurements.hessian.blocks import js_distance

    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(64), rng.random(64)
        assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-12)
    # two nearly equal broadened spectra whose tails reach denormals (seen on a GPT-2's blocks)
    x = np.linspace(0, 40, 1000)
    p, q = np.exp(-0.5 * (x / 0.5) ** 2), np.exp(-0.5 * (x / 0.5001) ** 2)
    assert np.isfinite(js_distance(p, q)) and js_distance(p, q) < 1e-3

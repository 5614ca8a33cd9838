"""Direction spec strings and the direction kinds of Li, Li, Zhan 2024: each parsed spec equals
the direction built by hand (gradient against autograd, checkpoints against subtraction)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.directions import parse_direction, parse_spec


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    return model, X, y, la.Objective(model, (X, y), batch_size=8)


def test_parse_spec_grammar():
    assert parse_spec("gaussian:filter:seed=3") == la.directions.spec.DirectionSpec(
        "gaussian", ["filter"], {"seed": 3})
    assert parse_spec("gradient:batch").args == ["batch"]
    assert parse_spec("eigen:SA:2").args == ["SA", "2"]
    assert parse_spec("checkpoint:runs/a:index=4").options == {"index": 4}
    assert parse_spec("gaussian:ignore=none").options == {"ignore": "none"}
    with pytest.raises(LossAtlasError, match="unknown kind"):
        parse_spec("random:3")
    with pytest.raises(LossAtlasError, match="needs a spec"):
        parse_spec("")


def test_gaussian_spec_matches_function(setup):
    model, *_, obj = setup
    d = parse_direction("gaussian:layer:seed=3", obj)
    want = la.directions.gaussian(model, norm="layer", seed=3)
    assert all(torch.equal(d[k], want[k]) for k in want)
    assert d.meta["label"].startswith("Gau.")
    with pytest.raises(LossAtlasError, match="unknown option"):
        parse_direction("gaussian:filter:sed=3", obj)


def test_gradient_specs_match_autograd(setup):
    model, X, y, obj = setup
    full = parse_direction("gradient", obj)
    model.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(full[k], -p.grad, rtol=1e-5, atol=1e-6)
    batch = parse_direction("gradient:batch:index=1", obj)
    model.zero_grad()
    nn.functional.cross_entropy(model(X[8:16]), y[8:16]).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(batch[k], -p.grad, rtol=1e-5, atol=1e-6)
    scaled = parse_direction("gradient:norm=model", obj)
    assert float(scaled.norm()) == pytest.approx(float(obj.center.norm()), rel=1e-5)
    with pytest.raises(LossAtlasError, match="batch"):
        parse_direction("gradient:batch:index=9", obj)


def test_checkpoint_specs(setup, tmp_path):
    _model, *_, obj = setup
    other = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    torch.save(other.state_dict(), tmp_path / "b.pt")
    d = parse_direction(f"checkpoint:{tmp_path / 'b.pt'}", obj)
    e = parse_direction(f"independent:{tmp_path / 'b.pt'}", obj)
    for k, p in other.named_parameters():
        torch.testing.assert_close(d[k], p.detach() - obj.center[k])
        torch.testing.assert_close(e[k], d[k])
    assert e.meta["span"] == [-1.0, 2.0] and e.meta["kind"] == "independent"
    with pytest.raises(LossAtlasError, match="does not exist"):
        parse_direction("checkpoint:/nonexistent.pt", obj)


def test_checkpoint_from_run_folder(setup, tmp_path):
    model, X, y, obj = setup
    run = la.train(model.__class__(*[m for m in model]), (X, y), epochs=2, batch_size=10,
                   out=tmp_path / "run", progress=False)
    d = parse_direction(f"checkpoint:{tmp_path / 'run'}:index=1", obj)
    for k in obj.names:
        torch.testing.assert_close(d[k], run.checkpoints[1][k] - obj.center[k])


def test_eigen_spec_uses_ordered_spectrum(setup):
    *_, obj = setup
    basis = [la.params.Point({k: torch.randn_like(v) for k, v in obj.center.items()})
             for _ in range(3)]
    fake = SimpleNamespace(values=[-0.5, -2.0, -1.0], vectors=basis)
    cache = {("eigen", "SA"): fake}
    d = parse_direction("eigen:SA:1:norm=none", obj, cache=cache)
    assert all(torch.equal(d[k], basis[1][k]) for k in d)   # eigenvalue -2.0 is N.E.1
    assert d.meta["label"] == "N.E.1" and d.meta["eigenvalue"] == -2.0
    d2 = parse_direction("eigen:SA:2", obj, cache=cache)     # default: scaled to ||theta||
    assert float(d2.norm()) == pytest.approx(float(obj.center.norm()), rel=1e-5)
    assert la.params.cosine(d2, basis[2]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(LossAtlasError, match="which"):
        parse_direction("eigen:XX:1", obj, cache=cache)


def test_pair_cosine_and_orthogonalize():
    a = la.params.Point(w=torch.tensor([1.0, 0.0, 0.0]))
    b = la.params.Point(w=torch.tensor([1.0, 2.0, 0.0]))
    d1, d2, cos = la.directions.pair(a, b, orthogonalize=True)
    assert cos == pytest.approx(1 / 5**0.5)
    assert float(d1.dot(d2)) == pytest.approx(0.0, abs=1e-7)
    assert float(d2.norm()) == pytest.approx(float(b.norm()))

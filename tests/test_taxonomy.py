"""la.taxonomy: the phase labels of Yang et al. Sect. 3.1 on synthetic metric tables."""

from __future__ import annotations

import math

import pytest

import lossatlas as la
from lossatlas.core.errors import LossAtlasError

T = la.taxonomy

# one synthetic sweep laid out like the paper's Fig. 2: rows = temperature, columns = load.
# Small load (narrow) + high temperature: under-fitted; narrow + low temperature: fitted with
# a barrier; wide + high temperature: under-fitted but connected; wide + low temperature: IV.
TABLE = [
    {"load": 4, "temperature": 16, "train_loss": 1.30, "mc": -25.0, "cka": 0.40,
     "hessian_max": 80.0, "hessian_trace": 900.0},                                    # I
    {"load": 64, "temperature": 16, "train_loss": 0.60, "mc": 12.0, "cka": 0.60,
     "hessian_max": 60.0, "hessian_trace": 700.0},                                    # II
    {"load": 4, "temperature": 512, "train_loss": 0.004, "mc": -18.0, "cka": 0.55,
     "hessian_max": 3.0, "hessian_trace": 20.0},                                      # III
    {"load": 16, "temperature": 512, "train_loss": 0.002, "mc": -0.8, "cka": 0.80,
     "hessian_max": 2.0, "hessian_trace": 15.0},                                      # IV-A
    {"load": 64, "temperature": 512, "train_loss": 0.001, "mc": 0.3, "cka": 0.97,
     "hessian_max": 1.5, "hessian_trace": 10.0},                                      # IV-B
]
WANT = ["I", "II", "III", "IV-A", "IV-B"]


def test_synthetic_table_labels():
    phases = T.classify_table(TABLE)
    assert [p.label for p in phases] == WANT
    assert [p.local for p in phases] == ["sharp", "sharp", "flat", "flat", "flat"]
    assert [p.connectivity for p in phases] == ["poor", "good", "poor", "good", "good"]
    assert {p.label for p in phases} == set(T.LABELS)


def test_table_as_columns():
    cols = {k: [r[k] for r in TABLE] for k in TABLE[0]}
    assert [p.label for p in T.classify_table(cols)] == WANT


def test_evidence_names_values_and_thresholds():
    p = T.classify(TABLE[0])
    assert p.evidence["train_loss"] == {"value": 1.3, "threshold": 0.1, "verdict": "large"}
    assert p.evidence["mc"]["threshold"] == -2.0 and "barrier" in p.evidence["mc"]["verdict"]
    assert "Phase I" in p.describe()
    # classify_table adds the geometric midpoint of the table's Hessian values as evidence
    q = T.classify_table(TABLE)[0]
    assert q.evidence["hessian_max"]["threshold"] == pytest.approx(math.sqrt(1.5 * 80.0))
    assert q.evidence["hessian_max"]["verdict"] == "sharp"


def test_thresholds_are_adjustable():
    row = TABLE[3]  # mc = -0.8, cka = 0.80
    assert T.classify(row).label == "IV-A"
    assert T.classify(row, cka=0.75).label == "IV-B"
    assert T.classify(row, mc=0.5).label == "III"  # a stricter "near zero"
    assert T.classify(row, T.Thresholds(train_loss=0.001)).label == "II"
    # boundaries: mc exactly -tol is still connected, cka exactly at the threshold is IV-B
    assert T.classify({"train_loss": 0.0, "mc": -2.0, "cka": 0.9}).label == "IV-B"
    assert T.classify({"train_loss": 0.0, "mc": -2.0001, "cka": 0.9}).label == "III"


def test_train_error_fallback_and_missing_metrics():
    assert T.classify({"train_error": 12.0, "mc": -30}).label == "I"
    assert T.classify({"train_error": 0.2, "mc": 0.0, "cka": 0.95}).label == "IV-B"
    assert T.classify({"train_loss": 0.001, "mc": 0.0}).label == "IV"  # no CKA
    p = T.classify({"train_loss": 0.001, "mc": float("nan")})
    assert p.label == "n/a" and p.evidence["missing"] == ["mc"]
    assert T.classify({"mc": 0.0}).label == "n/a"


def test_local_side_from_the_hessian():
    # loss says fitted, the Hessian says sharp: "hessian" follows the Hessian, "loss" the loss
    row = {"train_loss": 0.01, "mc": -10.0, "hessian_max": 50.0, "hessian_trace": 400.0}
    by_loss = T.classify(row, hessian_max=10.0, hessian_trace=100.0)
    assert by_loss.label == "III" and "Hessian says sharp" in by_loss.evidence["notes"][0]
    assert T.classify(row, hessian_max=10.0, hessian_trace=100.0, local="hessian").label == "I"
    # in a table the midpoint threshold is used
    table = [{**r, "train_loss": 0.01} for r in TABLE]
    labels = [p.label for p in T.classify_table(table, local="hessian")]
    assert labels[:2] == ["I", "II"] and labels[2] == "III"


def test_bad_thresholds():
    with pytest.raises(LossAtlasError, match="local"):
        T.Thresholds(local="curvature")
    with pytest.raises(LossAtlasError, match="mc"):
        T.Thresholds(mc=-1.0)
    with pytest.raises(LossAtlasError, match="row"):
        T.classify_table([1, 2])

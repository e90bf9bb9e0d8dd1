"""Verdicts: the non-inferiority method checked by simulation, the speed words and the crossover, and the
verdict table through ``attnbench run``, ``report`` and ``compare --baseline`` on real runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.analysis import verdicts
from harness.analysis.verdicts import (INCONCLUSIVE, NOT_WORSE, WORSE, Z_ONE_SIDED, accuracy_counts, accuracy_mdc,
                                      crossover, paired_accuracy, speed_word)

SIZES = (277, 408, 872)                       # RTE, MRPC and SST-2 validation rows
CHANGES = (0.0, -0.005, -0.01, -0.02)         # planted change of accuracy: 0, -0.5, -1 and -2 points
DRAWS = 2000


def planted(rng: np.random.Generator, n: int, changed: float, change: float, draws: int):
    """Paired per-example correctness ``(draws, n)`` of a reference (80 % right) and a backend whose
    predictions differ on a share ``changed`` of the examples, with a true change of accuracy ``change``."""
    lose, gain = (changed - change) / 2, (changed + change) / 2
    u = rng.random((draws, n))
    reference = rng.random((draws, n)) < 0.8
    reference = np.where(u < lose, True, np.where(u < lose + gain, False, reference))
    backend = np.where(u < lose, False, np.where(u < lose + gain, True, reference))
    return reference, backend


def resolvable(n: int, changed: float, change: float, margin: float) -> bool:
    """The design resolves a true change when the normal-theory chance of the right verdict is at least
    97.5 %: the distance to the margin is (z0.95 + z0.975) standard errors or more."""
    se = np.sqrt((changed - change ** 2) / n)
    return abs(change + margin) >= (Z_ONE_SIDED + sps.norm.ppf(0.975)) * se


def test_the_verdict_is_right_where_the_design_resolves_it_and_never_says_worse_without_a_change():
    rng = np.random.default_rng(7)
    resolved = {NOT_WORSE: 0, WORSE: 0}
    for margin in (0.02, 0.01, 0.0025):
        for n in SIZES:
            for changed in (0.004, 0.01, 0.02, 0.06):
                for change in CHANGES:
                    if changed < abs(change) or change == -margin:
                        continue
                    reference, backend = planted(rng, n, changed, change, DRAWS)
                    said = paired_accuracy(reference, backend, margin)["verdict"]
                    truth = NOT_WORSE if change > -margin else WORSE
                    if change == 0:
                        assert (said == WORSE).mean() <= 0.05, (margin, n, changed)
                    if resolvable(n, changed, change, margin):
                        resolved[truth] += 1
                        assert (said == truth).mean() >= 0.95, (margin, n, changed, change, (said == truth).mean())
    assert resolved[NOT_WORSE] >= 3 and resolved[WORSE] >= 1   # the grid holds cases of both kinds


def test_rte_cannot_resolve_a_two_point_drop_at_a_usual_rate_of_changed_predictions():
    rng = np.random.default_rng(3)
    reference, backend = planted(rng, 277, 0.06, -0.02, DRAWS)
    said = paired_accuracy(reference, backend, 0.01)["verdict"]
    assert (said == INCONCLUSIVE).mean() > 0.5 and not resolvable(277, 0.06, -0.02, 0.01)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("changed", (0.004, 0.03, 0.08))
def test_the_minimum_detectable_change_matches_the_simulated_power(n, changed):
    """At a true drop of MDC - 0.1 point the one-sided test (upper bound below 0) fires in under 80 % of the
    draws, at MDC + 0.1 point in over 80 %."""
    mdc = accuracy_mdc(n, changed)
    rng = np.random.default_rng(11)
    power = []
    for drop in (mdc - 0.001, mdc + 0.001):
        rate = max(changed, drop)  # a drop beyond the rate of changed predictions changes that many
        lose, gain = (rate + drop) / 2, (rate - drop) / 2
        counts = rng.multinomial(n, [lose, gain, 1 - lose - gain], size=40_000)
        power.append((accuracy_counts(counts[:, 0], counts[:, 1], n)["high"] < 0).mean())
    assert power[0] < 0.80 < power[1], (mdc, power)


def test_accuracy_counts_by_hand():
    # 100 examples, 3 lost and 1 gained: Δ = -0.02; Agresti-Min: Δ~ = -2/102, q~ = 5/102
    out = accuracy_counts(3, 1, 100, margin=0.05)
    d, q = -2 / 102, 5 / 102
    se = np.sqrt((q - d * d) / 102)
    assert out["delta"] == pytest.approx(-0.02)
    assert out["low"] == pytest.approx(d - 1.6448536 * se) and out["high"] == pytest.approx(d + 1.6448536 * se)
    assert out["verdict"] == INCONCLUSIVE
    assert accuracy_counts(0, 0, 10_000)["verdict"] == NOT_WORSE       # nothing changed, many examples
    assert accuracy_counts(900, 0, 10_000)["verdict"] == WORSE         # 9 points lost


def test_speed_words_and_crossover():
    assert speed_word(1.05, 1.3) == "faster" and speed_word(0.5, 0.9) == "slower"
    assert speed_word(0.9, 1.1) == "no clear difference" and speed_word(np.nan, np.nan) == "n/a"
    ratios = pd.DataFrame({"seq_len": [32, 128, 512], "low": [0.8, 1.02, 1.2]})
    assert crossover(ratios) == 128
    assert crossover(ratios.assign(low=[1.1, 0.9, 1.2])) == 512       # from 512 on, not from 32
    assert crossover(ratios.assign(low=[1.1, 1.2, 0.95])) is None      # not faster at the longest
    assert crossover(ratios.assign(low=[1.1, 1.2, 1.3])) == 32


def test_combined_verdict_words():
    assert verdicts.combined(WORSE, ["faster"]) == "worse"
    assert verdicts.combined(NOT_WORSE, ["faster", "faster"]) == "faster, not worse"
    assert verdicts.combined(INCONCLUSIVE, ["faster", "slower"]) == "speed differs by shape, inconclusive"


def test_the_minimum_detectable_change_is_near_its_normal_approximation_and_shrinks_with_n():
    k = 1.6448536 + 0.8416212
    for n in SIZES:
        assert accuracy_mdc(n, 0.15) == pytest.approx(k * np.sqrt(0.15 / n), abs=0.002)
    assert accuracy_mdc(277, 0.05) > accuracy_mdc(408, 0.05) > accuracy_mdc(872, 0.05)
    # nothing changed: a drop must change predictions itself; RTE needs a few lost examples to show it
    assert 0.01 < accuracy_mdc(277, 1 / 279) < 0.03


def test_bootstrap_metrics_keep_a_positive_detectable_change_when_nothing_changed():
    from harness.tasks import metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    same = verdicts.noninferiority(metrics.f1, labels, labels.copy(), labels.copy(), resamples=400)
    assert same.delta == 0 and same.mdc > 0 and same.low < 0 < same.high
    flipped = verdicts.noninferiority(metrics.matthews, labels, labels, 1 - labels, resamples=400)
    assert flipped.delta == pytest.approx(-2.0) and flipped.verdict == WORSE
    # accuracy: the closed form; the MDC of identical predictions shrinks with n
    small = verdicts.noninferiority(metrics.accuracy, labels[:50], labels[:50], labels[:50])
    large = verdicts.noninferiority(metrics.accuracy, labels, labels, labels)
    assert small.verdict == INCONCLUSIVE and large.verdict == NOT_WORSE and small.mdc > large.mdc > 0
    assert small.n_to_resolve > 50


def test_a_detectable_change_when_every_label_and_prediction_is_one_class():
    from harness.tasks import metrics

    ones = np.ones(200, dtype=np.int64)
    same = verdicts.noninferiority(metrics.f1, ones, ones.copy(), ones.copy(), resamples=400)
    assert same.mdc > 0 and same.verdict in (NOT_WORSE, INCONCLUSIVE)


def test_schema_5_files_read_with_null_verdicts_and_integer_shapes(tmp_path):
    """A file written before the verdict columns reads with nulls there; shapes read as nullable integers."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness import read_results
    from harness.store.schema import SCHEMA

    directory = tmp_path / "store" / "machine=old" / "date=2026-01-01"
    directory.mkdir(parents=True)
    fields = [f for f in SCHEMA if f.name not in ("primary", "verdict", "margin", "mdc")]
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    table = pa.Table.from_pylist([
        {"run_id": "old", "timestamp": when, "source": "harness", "backend": "topk", "task": "rte",
         "category": "paired", "metric": "delta_vs_reference:accuracy", "value": -0.01},
        {"run_id": "old", "timestamp": when, "source": "harness", "backend": "topk", "category": "speed",
         "metric": "latency_forward", "value": 0.5, "batch_size": 8, "seq_len": 128}], schema=pa.schema(fields))
    pq.write_table(table.replace_schema_metadata({b"attnbench.schema_version": b"5"}), directory / "part-old.parquet")
    rows = read_results(tmp_path / "store")
    assert rows["verdict"].isna().all() and rows["margin"].isna().all() and rows["primary"].isna().all()
    assert rows["batch_size"].tolist()[1] == 8 and pd.isna(rows["batch_size"].tolist()[0])
    assert str(rows["seq_len"].dtype) == "Int32"
    assert verdicts.verdict_table(rows).empty          # no verdict is invented for old rows

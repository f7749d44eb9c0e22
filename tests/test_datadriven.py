"""Data-driven threshold and potential initialization (Bojkovic et al. 2024), sw/datadriven.py.

The brute-force references live here, not in the module: every candidate pair of Theorem 4.2
(T = 1), every candidate threshold of Algorithm 2 (T > 1), and a fine grid of arbitrary
(theta, v0) pairs. Values drawn as multiples of 1/8 keep all arithmetic exact in float64.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitspike.sw import datadriven as dd
from bitspike.sw.datadriven import (
    calibrate,
    conversion_error,
    optimal_threshold,
    optimal_threshold_t1,
    snn_output,
)

eighths = st.integers(0, 320).map(lambda k: k / 8)
small_ints = st.integers(0, 20).map(float)
# activations of a trained layer: zeros and floats in a sane range (no subnormal thresholds)
plain_floats = st.one_of(st.just(0.0), st.floats(1e-3, 100.0))


def _activations(elements):
    return st.lists(elements, min_size=1, max_size=12).filter(lambda v: max(v) > 0)


exact_values = _activations(st.one_of(eighths, small_ints))


def _close(x: float, y: float) -> bool:
    return abs(x - y) <= 1e-9 * max(abs(x), abs(y)) + 1e-12


def literal_if(a, theta, v0, T):
    """Spike counts of the IF neuron, literally: v = v0; v += a; s = v >= theta; v -= s theta."""
    counts = np.zeros(len(a), dtype=np.int64)
    for i, ai in enumerate(a):
        v = v0
        for _ in range(T):
            v += ai
            s = v >= theta
            v -= s * theta
            counts[i] += s
    return counts


def _counts(a, theta, v0, T):
    out = snn_output(a, theta, v0, T)
    counts = np.rint(out * T / theta).astype(np.int64)
    np.testing.assert_allclose(out, theta / T * counts, rtol=1e-15, atol=0)
    return counts


def grid_min_error(a, T, n_theta=301, n_v0=61):
    """Smallest C_1 over theta in (0, 1.1 T max a], v0 in [0, 1.5 theta] (closed form)."""
    a = np.asarray(a, dtype=np.float64)
    top = a.max()
    theta = np.linspace(top / 64, 1.1 * T * top, n_theta)[:, None, None]
    v0 = theta * np.linspace(0.0, 1.5, n_v0)[None, :, None]
    phi = theta / T * np.clip(np.floor((T * a + v0) / theta), 0, T)
    return float(np.abs(a - phi).mean(axis=-1).min())


# --- the neuron model ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(a=st.lists(eighths, min_size=1, max_size=20), k_theta=st.integers(1, 64),
       T=st.integers(1, 10), data=st.data())
def test_snn_output_is_the_literal_if_neuron(a, k_theta, T, data):
    theta = k_theta / 8
    v0 = data.draw(st.integers(0, 3 * k_theta)) / 8  # v0 in [0, 3 theta]: a >= 0, v0 >= 0
    assert np.array_equal(_counts(a, theta, v0, T), literal_if(a, theta, v0, T))


def test_snn_output_matches_literal_if_on_random_floats():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        T = int(rng.integers(1, 17))
        theta = float(rng.uniform(0.2, 2.0))
        v0 = float(rng.uniform(0.0, theta))
        a = rng.uniform(0.0, 1.5 * theta, size=50)
        arg = (T * a + v0) / theta
        away = np.abs(arg - np.rint(arg)) > 1e-9  # rounding may differ right at a level edge
        got, want = _counts(a, theta, v0, T), literal_if(a, theta, v0, T)
        assert np.array_equal(got[away], want[away])
        checked += int(away.sum())
    assert checked > 14_000


def test_conversion_error_is_mean_absolute_error():
    a = np.array([0.0, 0.3, 1.0, 2.5])
    # T = 2, theta = 2, v0 = 1: levels 0, 1, 2 -> outputs 0, 0, 1, 2
    assert np.array_equal(snn_output(a, 2.0, 1.0, 2), [0.0, 0.0, 1.0, 2.0])
    assert conversion_error(a, 2.0, 1.0, 2) == pytest.approx((0 + 0.3 + 0 + 0.5) / 4)


# --- T = 1: Algorithm 1 and Theorem 4.2 ---------------------------------------------------------


def brute_force_t1(a):
    """min C_1 over all pairs theta = a(n1), v0 = a(n1) - a(n0) (Theorem 4.2)."""
    a = np.asarray(a, dtype=np.float64)
    return min(conversion_error(a, a[n1], a[n1] - a[n0], 1)
               for n0, n1 in itertools.product(range(a.size), repeat=2) if a[n1] > 0)


@settings(max_examples=300, deadline=None)
@given(values=exact_values)
def test_theorem_4_2_algorithm_1_is_the_brute_force_optimum(values):
    a = np.sort(np.array(values))
    theta, v0 = optimal_threshold_t1(a)
    err = conversion_error(a, theta, v0, 1)
    assert _close(err, brute_force_t1(a))
    assert err <= grid_min_error(a, 1) * (1 + 1e-9) + 1e-12  # no (theta, v0) does better
    # the shape of Theorem 4.2: theta = a(n1), v0 = a(n1) - a(n0), 0 <= v0 <= theta
    assert theta in a and (theta - v0) in a and 0 <= v0 <= theta
    # ... theta a median of the fire set {a >= a(n0)} ...
    fire = a[a >= theta - v0]
    assert (fire < theta).sum() <= fire.size / 2 and (fire > theta).sum() <= fire.size / 2
    # ... and the cut a(n0) straddles theta / 2 (the corrected second half of Thm 4.2)
    below = a[a < theta - v0]
    assert theta - v0 >= theta / 2 and (below.size == 0 or below.max() <= theta / 2)
    # v0 = theta / 2 (Thm 4.1 / 4.3) is just as good on these values
    assert _close(conversion_error(a, theta, theta / 2, 1), err)
    assert optimal_threshold(a, 1) == (theta, v0)


@settings(max_examples=200, deadline=None)
@given(values=_activations(plain_floats))
def test_algorithm_1_on_arbitrary_floats(values):
    a = np.sort(np.array(values))
    theta, v0 = optimal_threshold_t1(a)
    err = conversion_error(a, theta, v0, 1)
    # nearest-level rule with theta on a value: exact optimum, free of rounding at the cut
    best = min(conversion_error(a, t, t / 2, 1) for t in a if t > 0)
    assert _close(err, best)
    assert err <= brute_force_t1(a) * (1 + 1e-9) + 1e-12


def test_theorem_4_2_nearest_point_rule_is_not_always_optimal():
    # Thm 4.2 says n0 minimizes |a(n0) - a(n1)/2|; here the optimum is theta = 24 with the cut
    # at 20, while the value nearest to 12 is 9 (the cut must be the smallest a >= theta / 2).
    a = np.array([1.0, 9.0, 20.0, 24.0, 28.0])
    theta, v0 = optimal_threshold_t1(a)
    assert (theta, v0) == (24.0, 4.0)
    assert conversion_error(a, 24.0, 4.0, 1) == pytest.approx(18 / 5)
    assert conversion_error(a, 24.0, 24.0 - 9.0, 1) > conversion_error(a, 24.0, 4.0, 1)
    assert _close(brute_force_t1(a), 18 / 5)


def test_algorithm_1_with_duplicates_zeros_and_a_lone_maximum():
    a = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 100.0])
    theta, v0 = optimal_threshold_t1(a)
    assert (theta, v0) == (100.0, 0.0)  # only the maximum fires; the paper's loop skips this
    assert _close(conversion_error(a, theta, v0, 1), brute_force_t1(a))
    a = np.full(7, 2.5)
    assert optimal_threshold_t1(a) == (2.5, 0.0)
    assert conversion_error(a, 2.5, 0.0, 1) == 0.0


# --- T > 1: Algorithm 2 and Theorem 4.3 ---------------------------------------------------------


def level_candidates(a, T):
    """theta = T a_i / j: the thresholds that put some value exactly on level j."""
    return sorted({T * x / j for x in a if x > 0 for j in range(1, T + 1)})


@settings(max_examples=300, deadline=None)
@given(values=st.one_of(exact_values, _activations(plain_floats)), T=st.integers(2, 6))
def test_algorithm_2_reaches_the_brute_force_optimum(values, T):
    a = np.sort(np.array(values))
    theta, v0 = optimal_threshold(a, T)
    assert v0 == theta / 2  # Theorem 4.3
    err = conversion_error(a, theta, v0, T)
    # brute force over every threshold that puts a value on a level, v0 = theta / 2
    assert _close(err, min(conversion_error(a, t, t / 2, T) for t in level_candidates(a, T)))
    # the paper's Algorithm 2 candidates theta = a_i, v0 = theta / 2: never better
    paper = min(conversion_error(a, t, t / 2, T) for t in a if t > 0)
    assert err <= paper * (1 + 1e-9) + 1e-12
    th_data, v0_data = optimal_threshold(a, T, candidates="data")
    assert v0_data == th_data / 2 and th_data in a
    assert _close(conversion_error(a, th_data, v0_data, T), paper)
    # and no arbitrary (theta, v0) on a fine grid does better
    assert err <= grid_min_error(a, T) * (1 + 1e-9) + 1e-12


def test_algorithm_2_candidate_set_of_the_paper_can_miss_the_optimum():
    a = np.array([1.0, 1.0, 1.0, 1.9])
    theta, v0 = optimal_threshold(a, 2)
    assert (theta, v0) == (2.0, 1.0)  # levels 1 and 2: the three 1.0 exact, 1.9 -> 2
    assert conversion_error(a, theta, v0, 2) == pytest.approx(0.1 / 4)
    th_data, _ = optimal_threshold(a, 2, candidates="data")
    assert th_data == 1.9
    assert conversion_error(a, 1.9, 0.95, 2) == pytest.approx(0.15 / 4)


@settings(max_examples=200, deadline=None)
@given(values=_activations(plain_floats), T=st.integers(1, 8), k=st.integers(1, 200))
def test_theorem_4_3_half_threshold_is_best_for_any_threshold(values, T, k):
    # with v0 = theta / 2 every value goes to its nearest level: no v0 beats it
    a = np.array(values)
    theta = k / 200 * T * a.max()
    best = conversion_error(a, theta, theta / 2, T)
    for v0 in np.linspace(0, 1.5 * theta, 301):
        assert best <= conversion_error(a, theta, float(v0), T) + 1e-12


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_sweep_matches_scoring_every_level_candidate(T):
    rng = np.random.default_rng(T)
    a = np.sort(np.concatenate([np.zeros(300), rng.gamma(0.7, size=1500),
                                np.round(rng.exponential(size=200), 1)]))
    x = a[a > 0]
    prefix = np.concatenate(([0.0], np.cumsum(x)))
    cands = np.unique(np.outer(T / np.arange(1, T + 1), x))
    sums = dd._nearest_level_error_sums(x, prefix, cands, T)
    theta, v0 = optimal_threshold(a, T)
    assert _close(conversion_error(a, theta, v0, T), float(sums.min()) / a.size)
    # the prefix-sum scorer agrees with the closed form
    for t in cands[:: cands.size // 7]:
        assert _close(float(dd._nearest_level_error_sums(x, prefix, np.array([t]), T)[0]),
                      conversion_error(x, t, t / 2, T) * x.size)


def test_thinned_sweep_lands_next_to_the_optimum(monkeypatch):
    a = np.sort(np.random.default_rng(3).exponential(size=20_000))
    exact = conversion_error(a, *optimal_threshold(a, 16), 16)
    monkeypatch.setattr(dd, "_SWEEP_BUDGET", 1 << 14)  # forces every 40th value in the sweep
    thinned = conversion_error(a, *optimal_threshold(a, 16), 16)
    assert exact <= thinned <= exact * (1 + 1e-4)


def test_sweep_for_t1_agrees_with_algorithm_1():
    a = np.sort(np.random.default_rng(1).lognormal(size=5000))
    prefix = np.concatenate(([0.0], np.cumsum(a)))
    t = dd._level_threshold_sweep(a, prefix, 1)
    assert _close(conversion_error(a, t, t / 2, 1),
                  conversion_error(a, *optimal_threshold_t1(a), 1))


# --- calibrate, errors, speed -------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 4])
def test_calibrate_drops_zeros_and_matches_the_search(T):
    rng = np.random.default_rng(T)
    acts = np.maximum(rng.normal(size=(50, 4, 6, 6)), 0.0)  # ReLU outputs, about half zero
    assert calibrate(acts, T) == optimal_threshold(np.sort(acts.ravel()), T)


def test_calibrate_subsample_is_deterministic_and_keeps_the_maximum():
    acts = np.random.default_rng(0).exponential(size=50_000)
    assert calibrate(acts, 4, max_samples=1000) == calibrate(acts, 4, max_samples=1000, seed=0)
    assert calibrate(acts, 4, max_samples=1000, seed=1) != calibrate(acts, 4, max_samples=1000)
    assert calibrate(acts, 1, max_samples=1) == (acts.max(), 0.0)
    full = calibrate(acts, 4, max_samples=None)
    assert calibrate(acts, 4, max_samples=50_000) == full
    assert calibrate(acts, 4, max_samples=10_000)[0] == pytest.approx(full[0], rel=0.05)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("acts", [np.zeros((8, 16, 4, 4)), np.zeros(0), np.zeros((3, 0))])
def test_dead_or_empty_layer_is_a_clear_error(acts, T):
    with pytest.raises(ValueError, match="dead layer|empty"):
        calibrate(acts, T)


def test_dead_layer_message_names_the_problem():
    with pytest.raises(ValueError, match=r"dead layer: all 4096 activations are zero"):
        calibrate(np.zeros((16, 16, 4, 4), dtype=np.float32), 4)
    with pytest.raises(ValueError, match="dead layer"):
        optimal_threshold(np.zeros(10), 2)
    with pytest.raises(ValueError, match="dead layer"):
        optimal_threshold_t1(np.zeros(3))


@pytest.mark.parametrize("bad,match", [
    (np.array([1.0, -0.5]), ">= 0"),
    (np.array([1.0, np.nan]), "finite"),
    (np.array([1.0, np.inf]), "finite"),
])
def test_calibrate_rejects_bad_activations(bad, match):
    with pytest.raises(ValueError, match=match):
        calibrate(bad, 2)


def test_bad_arguments():
    a = np.array([0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="sorted"):
        optimal_threshold(a[::-1], 2)
    with pytest.raises(ValueError, match="empty"):
        optimal_threshold(np.zeros(0), 2)
    for T in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="latency T"):
            optimal_threshold(a, T)
    with pytest.raises(ValueError, match="candidates"):
        optimal_threshold(a, 2, candidates="paper")
    with pytest.raises(ValueError, match="max_samples"):
        calibrate(a, 2, max_samples=0)
    with pytest.raises(ValueError, match="theta"):
        snn_output(a, 0.0, 0.0, 2)
    with pytest.raises(ValueError, match="at least one"):
        conversion_error(np.zeros(0), 1.0, 0.5, 2)


@pytest.mark.parametrize("T", [1, 4, 16])
def test_calibrate_speed_on_three_million_values(T):
    acts = np.random.default_rng(0).exponential(size=3_000_000).astype(np.float32)
    start = time.perf_counter()
    theta, v0 = calibrate(acts, T)
    elapsed = time.perf_counter() - start
    print(f"calibrate(3,000,000 values, T={T}): {elapsed:.3f} s -> theta={theta:.4f} v0={v0:.4f}")
    assert 0 < v0 <= theta and elapsed < 10.0

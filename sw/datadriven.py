"""Data-driven threshold and initial-potential calibration for rate-coded IF layers.

Implements the layer-wise method of Bojkovic et al., "Data Driven Threshold and Potential
Initialization for Spiking Neural Networks" (AISTATS 2024), the ``data-driven`` row of
docs/conversion-math.md section 3. Numpy only.

The model (paper section 3, Eq. 1 and Eq. 5; section 4.1.1). An integrate-and-fire neuron with
reset by subtraction, threshold ``theta`` (the paper's ``V_th``), initial potential ``v0`` (the
paper's ``v[0]``) and latency ``T`` receives the ANN activation ``a`` as a constant input current
at every step::

    v = v0
    for t in 1..T:
        v = v + a
        s[t] = (v >= theta)
        v = v - s[t] * theta
    a_snn = theta / T * sum_t s[t]                      # Eq. 5

(Eq. 1 writes the reset of step ``t - 1`` into the update of step ``t``; that is the same neuron,
with ``v[t]`` read as the potential before the reset.) In closed form, for ``v0 >= 0`` and
``a >= 0`` (and also for ``0 <= v0 <= theta`` and any ``a``)::

    phi(a) = theta / T * clip(floor((T * a + v0) / theta), 0, T)

:func:`snn_output` computes ``phi``. The layer-wise error that the paper minimizes is ``C_1`` of
Eq. 9 with ``m = 1`` (Algorithms 1 and 2 are stated for ``C_1``), the mean absolute difference over
the empirical distribution of the layer's activations::

    C_1(theta, v0, T) = mean_i |a_i - phi(a_i)|

:func:`conversion_error` computes it. (Eq. 14 in the supplement writes the same thing as a sum;
the minimizer is the same.)

Searches (minimizers of ``C_1`` on the given values):

* ``T = 1``: :func:`optimal_threshold_t1`, Algorithm 1 / Theorem 4.2. The neuron fires iff
  ``a >= theta - v0``, so a choice is a cut ``c`` (the fire set ``{a >= c}``) and a threshold. For
  every cut at a distinct value ``a(n0)`` the best threshold is a median of the fire set,
  ``a(n1)``, ``n1 = n0 + floor((N - 1 - n0) / 2)`` (0-based); all cuts are scored at once with
  prefix sums (O(N) after sorting) and the result is ``(a(n1), a(n1) - a(n0))`` as in Thm 4.2.
* ``T > 1``: :func:`optimal_threshold`, Algorithm 2: ``v0 = theta / 2`` (Theorem 4.3) and a scan
  of candidate thresholds for the smallest error ``E(theta)``. With ``v0 = theta / 2`` the neuron
  outputs the *nearest* of the levels ``0, theta/T, ..., theta`` (clipped at ``theta``), which is
  pointwise optimal for a fixed ``theta``, so Thm 4.3 holds exactly for discrete data too.
  ``E(theta)`` is then continuous and piecewise linear, and its minima lie at the thresholds that
  put a data value exactly on a level: ``theta = T * a_i / j``, ``j = 1..T``. The paper's
  Algorithm 2 scans only ``j = T`` (``theta = a_i``, and only ``i`` in ``N/2..N-5``), which can
  miss the optimum for ``T > 1``; the default (``candidates="levels"``) scans all ``T * N``
  candidates with one sorted sweep over the breakpoints of ``E`` (O(N T log(N T)) time, O(N T)
  memory; thinned above 2**21 ``N T``). ``candidates="data"`` restricts the scan to
  ``theta = a_i`` as in the paper (all ``i``, no index window).

:func:`calibrate` is the per-layer wrapper for a calibration pass over training data.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "calibrate",
    "conversion_error",
    "optimal_threshold",
    "optimal_threshold_t1",
    "snn_output",
]

# after the breakpoint sweep, this many of the best kinks are re-scored exactly
_REFINE = 16
# most breakpoints (2 T N) swept at once; above it the sweep ranks on a thinned copy
_SWEEP_BUDGET = 1 << 22
# candidate thresholds scored per block by the prefix-sum evaluator
_BLOCK = 1 << 15


def _check_steps(T) -> int:
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"latency T must be a positive integer, not {T!r}")
    return int(T)


def _check_theta(theta) -> float:
    theta = float(theta)
    if not np.isfinite(theta) or theta <= 0:
        raise ValueError(f"threshold theta must be finite and > 0, not {theta!r}")
    return theta


def snn_output(a, theta: float, v0: float, T: int) -> np.ndarray:
    """T-step output of an IF neuron (reset by subtraction) driven by a constant input ``a``.

    Parameters
    ----------
    a : array_like
        Input current per step, i.e. the ANN activation value (any shape).
    theta : float
        Firing threshold ``V_th`` (> 0); each spike is worth ``theta``.
    v0 : float
        Initial membrane potential ``v[0]``.
    T : int
        Latency (number of time steps), ``T >= 1``.

    Returns
    -------
    numpy.ndarray
        ``phi(a) = theta / T * clip(floor((T * a + v0) / theta), 0, T)`` in float64, the shape of
        ``a``: the firing rate times the threshold (paper Eq. 5).

    Notes
    -----
    The closed form equals the literal simulation ``v = v0; for t: v += a; s = v >= theta;
    v -= s * theta`` whenever ``v0 >= 0`` and ``a >= 0`` (the neuron fires at most once per step
    and never needs a negative spike), and also whenever ``0 <= v0 <= theta``. Outside that domain
    (``v0 < 0`` with a large ``a``, or ``v0 > theta`` with ``a < 0``) the literal neuron differs;
    the calibration only produces ``0 <= v0 <= theta``. In floating point the two can differ
    where ``(T * a + v0) / theta`` is within rounding of an integer.
    """
    T = _check_steps(T)
    theta = _check_theta(theta)
    a = np.asarray(a, dtype=np.float64)
    count = np.clip(np.floor((T * a + float(v0)) / theta), 0, T)
    return theta * count / T


def conversion_error(a, theta: float, v0: float, T: int) -> float:
    """Layer-wise conversion error ``C_1`` (paper Eq. 9 with ``m = 1``).

    Parameters
    ----------
    a : array_like
        Activation values of the layer (all neurons, all samples; any shape, not empty).
    theta, v0, T
        Threshold, initial potential and latency, as in :func:`snn_output`.

    Returns
    -------
    float
        ``mean(|a - snn_output(a, theta, v0, T)|)``: the absolute (not squared) error, averaged
        over the empirical distribution of ``a``.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        raise ValueError("conversion_error needs at least one activation value")
    return float(np.mean(np.abs(a - snn_output(a, theta, v0, T))))


def _sorted_activations(a_sorted) -> np.ndarray:
    a = np.asarray(a_sorted, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-D sorted array of activations, got shape {a.shape}")
    if a.size == 0:
        raise ValueError("no activation values: cannot calibrate an empty layer")
    if not np.all(np.isfinite(a)):
        raise ValueError("activation values must be finite (found NaN or inf)")
    if a[0] < 0:
        raise ValueError(f"activation values must be >= 0 (ReLU outputs); minimum is {a[0]!r}")
    if np.any(a[1:] < a[:-1]):
        raise ValueError("activation values must be sorted in non-decreasing order")
    if a[-1] <= 0:
        raise ValueError(
            f"dead layer: all {a.size} activation values are zero, so no threshold can be "
            "derived from them"
        )
    return a


def optimal_threshold_t1(a_sorted) -> tuple[float, float]:
    """Optimal threshold and initial potential for ``T = 1`` (Algorithm 1, Theorem 4.2).

    Parameters
    ----------
    a_sorted : array_like
        1-D activation values in non-decreasing order, ``>= 0``, at least one ``> 0``. Zeros may
        be present (they never change the optimum).

    Returns
    -------
    theta : float
        ``a(n1)``, a median of the fire set ``{a >= a(n0)}``.
    v0 : float
        ``a(n1) - a(n0)`` (``0 <= v0 <= theta``), so that exactly the values ``>= a(n0)`` fire
        (nudged up by a few ulps if rounding of ``a(n0) + v0`` would make ``a(n0)`` miss).

    Notes
    -----
    With ``T = 1`` the output is ``theta`` when ``a >= theta - v0`` and 0 otherwise, so

        N * C_1 = sum_{a < c} a + sum_{a >= c} |a - theta|,   c = theta - v0.

    For each cut ``c = a(n0)`` at the start of a run of equal values the second sum is smallest
    for ``theta`` = a median of the fire set, ``a(n1)`` with ``n1 = n0 + floor((N - 1 - n0) / 2)``
    (0-based; the paper's 1-based ``n1 = n0 + floor((N - n0) / 2)``). Every cut is scored with
    prefix sums and the best one is returned: O(N), the same quantity that Algorithm 1 updates
    incrementally. The optimum satisfies ``a(n0 - 1) <= theta / 2 <= a(n0)``; ``v0 = theta / 2``
    gives the same error on these values.

    Raises
    ------
    ValueError
        If the array is empty, unsorted, negative, not finite, or all zero (a dead layer).
    """
    a = _sorted_activations(a_sorted)
    N = a.size
    prefix = np.concatenate(([0.0], np.cumsum(a)))
    # cuts only at the first index of each run of equal values: a >= a(n0) fires all of the run
    n0 = np.flatnonzero(np.concatenate(([True], a[1:] > a[:-1])))
    n1 = n0 + (N - 1 - n0) // 2
    med = a[n1]
    err = (
        prefix[n0]  # below the cut: no spike, error a
        + med * (n1 - n0) - (prefix[n1] - prefix[n0])  # fire set, below the median
        + (prefix[N] - prefix[n1 + 1]) - med * (N - 1 - n1)  # fire set, above the median
    )
    best = int(np.argmin(err))
    theta = float(a[n1[best]])
    cut = float(a[n0[best]])
    v0 = theta - cut
    # keep a(n0) firing despite rounding of (cut + v0) / theta
    for _ in range(64):
        if np.floor((cut + v0) / theta) >= 1:
            break
        v0 = float(np.nextafter(v0, np.inf))
    return theta, v0


def _nearest_level_error_sums(x: np.ndarray, prefix: np.ndarray, thetas: np.ndarray, T: int):
    """``sum_i |x_i - phi(x_i)|`` with ``v0 = theta / 2`` for each theta (x sorted, prefix sums)."""
    n = x.size
    out = np.empty(thetas.size)
    levels = np.arange(T + 1, dtype=np.float64)
    for start in range(0, thetas.size, max(1, _BLOCK // (T + 1))):
        th = thetas[start:start + max(1, _BLOCK // (T + 1))]
        step = th[:, None] / T
        value = step * levels  # (K, T + 1) level values
        # level j takes [value_j - step/2, value_j + step/2); level T takes everything above
        lo = np.searchsorted(x, (value - step / 2).ravel()).reshape(value.shape)
        lo[:, 0] = 0
        hi = np.empty_like(lo)
        hi[:, :-1] = lo[:, 1:]
        hi[:, -1] = n
        mid = np.clip(np.searchsorted(x, value.ravel()).reshape(value.shape), lo, hi)
        below = value * (mid - lo) - (prefix[mid] - prefix[lo])
        above = (prefix[hi] - prefix[mid]) - value * (hi - mid)
        out[start:start + th.size] = (below + above).sum(axis=1)
    return out


def _level_threshold_sweep(x: np.ndarray, prefix: np.ndarray, T: int) -> float:
    """Minimizer over theta of ``E(theta)`` with ``v0 = theta / 2`` (x > 0, sorted).

    For one value ``x > 0``, ``|x - phi(x)|`` as a function of theta has slope ``-1`` for small
    theta; at ``theta = T x / j`` (x lies on level j) the slope rises by ``2 j / T``; at
    ``theta = 2 T x / (2 j - 1)`` (x leaves level j for level j - 1) it falls by
    ``(2 j - 1) / T``. Sorting all these breakpoints and integrating the slope gives E at every
    breakpoint; the minimum is at one of the ``T x / j`` kinks. The best kinks of the sweep are
    re-scored exactly on all of ``x``. Above ``_SWEEP_BUDGET`` breakpoints the sweep runs on every
    k-th sorted value (it then only ranks candidates; the re-scoring still uses all values).
    """
    thin = max(1, -(-2 * x.size * T // _SWEEP_BUDGET))
    xs = x if thin == 1 else x[thin // 2::thin]
    n = xs.size
    j = np.arange(1, T + 1)
    # rows 0..T-1: kinks theta = T x / j (slope +2j/T); rows T..2T-1: edges 2 T x / (2j - 1)
    factors = np.concatenate((T / j, 2.0 * T / (2 * j - 1)))
    dslope = np.concatenate((2 * j, -(2 * j - 1))).astype(np.int32)  # in units of 1/T: exact
    where = (factors[:, None] * xs[None, :]).ravel()
    order = np.argsort(where, kind="stable")
    where = where[order]
    slope = np.cumsum(np.repeat(dslope, n)[order], dtype=np.int64)
    slope -= n * T  # slope * T just after each breakpoint
    is_kink = order < T * n
    del order
    err = np.empty(where.size)
    err[0] = 0.0  # relative to E(min x), where every x is on level T
    np.cumsum(slope[:-1] * np.diff(where), out=err[1:])
    cand = np.flatnonzero(is_kink)
    keep = _REFINE if thin == 1 else 4 * _REFINE
    if cand.size > keep:
        cand = cand[np.argpartition(err[cand], keep)[:keep]]
    thetas = np.unique(where[cand])
    exact = _nearest_level_error_sums(x, prefix, thetas, T)
    return float(thetas[int(np.argmin(exact))])


def optimal_threshold(a_sorted, T: int, *, candidates: str = "levels") -> tuple[float, float]:
    """Optimal threshold and initial potential for latency ``T`` (Algorithms 1 and 2).

    Parameters
    ----------
    a_sorted : array_like
        1-D activation values in non-decreasing order, ``>= 0``, at least one ``> 0``.
    T : int
        Latency, ``T >= 1``. ``T = 1`` dispatches to :func:`optimal_threshold_t1`.
    candidates : {"levels", "data"}, optional
        Threshold candidates scanned for ``T > 1``. ``"levels"`` (default): every threshold that
        puts a value exactly on a level, ``T * a_i / j`` for ``j = 1..T``; this set contains the
        global minimizer of ``C_1``. ``"data"``: only ``theta = a_i`` (the candidate set of the
        paper's Algorithm 2, without its ``N/2..N-5`` index window); it can miss the optimum.
        Ignored for ``T = 1``.

    Returns
    -------
    theta : float
        The threshold with the smallest ``C_1`` among the candidates.
    v0 : float
        ``theta / 2`` for ``T > 1`` (Theorem 4.3); for ``T = 1`` see :func:`optimal_threshold_t1`.

    Notes
    -----
    For ``T > 1`` this is Algorithm 2 with ``E(theta) = N * C_1(theta, theta / 2, T)``. With
    ``v0 = theta / 2`` each value goes to its nearest level ``k theta / T`` (``k = 0..T``), which
    for a fixed theta is the best any ``v0`` can do; ``E`` is continuous and piecewise linear in
    theta with its local minima at ``theta = T a_i / j``, so scanning those finds the global
    minimum of ``C_1`` over all ``(theta, v0)``.

    ``"levels"`` evaluates ``E`` at all ``T N`` kinks in one sorted sweep over the ``2 T N``
    breakpoints of ``E`` (O(N T log(N T)) time, O(N T) memory), then re-scores the 16 best
    exactly. Above 2**22 breakpoints (N T > 2**21) the sweep ranks the candidates of every
    k-th sorted value only and the 64 best are re-scored on all values, which bounds the cost
    for large ``T`` but is no longer guaranteed to hit the exact minimizer (it lands next to it).
    ``"data"`` scores each ``a_i`` with prefix sums and binary searches (O(N T log N)) instead of
    the paper's one pass over the array per candidate.

    Raises
    ------
    ValueError
        As :func:`optimal_threshold_t1`, or for a bad ``T`` or ``candidates``.
    """
    T = _check_steps(T)
    if candidates not in ("levels", "data"):
        raise ValueError(f'candidates must be "levels" or "data", not {candidates!r}')
    if T == 1:
        return optimal_threshold_t1(a_sorted)
    a = _sorted_activations(a_sorted)
    x = a[np.searchsorted(a, 0.0, side="right"):]  # zeros sit on level 0 for every theta
    prefix = np.concatenate(([0.0], np.cumsum(x)))
    if candidates == "levels":
        theta = _level_threshold_sweep(x, prefix, T)
    else:
        thetas = np.unique(x)
        theta = float(thetas[int(np.argmin(_nearest_level_error_sums(x, prefix, thetas, T)))])
    return theta, theta / 2


def calibrate(
    activations: np.ndarray,
    T: int,
    *,
    max_samples: int | None = 200_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Threshold and initial potential of one layer from its activations on a calibration pass.

    Parameters
    ----------
    activations : numpy.ndarray
        The layer's ANN activation values (ReLU or QCFS outputs, ``>= 0``) over the calibration
        samples, any shape; flattened.
    T : int
        Latency of the SNN, ``T >= 1``.
    max_samples : int or None, optional
        Zeros are dropped first (as in the paper's supplement 8.3; they never change the
        optimum). If more than ``max_samples`` positive values remain, a uniform random subset
        of exactly ``max_samples`` of them is used, drawn with ``numpy.random.default_rng(seed)``
        (so the result is deterministic) and always containing the largest activation. ``None``
        uses all values. Default 200 000.
    seed : int, optional
        Seed of the subsample. Default 0.

    Returns
    -------
    theta : float
        Threshold ``V_th`` of the layer.
    v0 : float
        Initial membrane potential ``v[0]`` of the layer (``theta / 2`` for ``T > 1``).

    Raises
    ------
    ValueError
        If there are no activations, if any is negative or not finite, or if all are zero
        (a dead layer: no spike would ever be needed, and no threshold can be derived).

    Notes
    -----
    ``T = 1``: Algorithm 1 (:func:`optimal_threshold_t1`); ``T > 1``: Algorithm 2 over the
    ``"levels"`` candidate set (:func:`optimal_threshold`). Cost after subsampling: a sort, then
    O(N) for ``T = 1`` or O(N T log(N T)) for ``T > 1``.
    """
    T = _check_steps(T)
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, numbers.Integral)
        or max_samples < 1
    ):
        raise ValueError(f"max_samples must be a positive integer or None, not {max_samples!r}")
    x = np.asarray(activations).ravel()
    if x.size == 0:
        raise ValueError("no activations to calibrate from (empty array)")
    if not np.all(np.isfinite(x)):
        raise ValueError("activations must be finite (found NaN or inf)")
    if np.any(x < 0):
        raise ValueError(
            f"activations must be >= 0 (ReLU/QCFS outputs); minimum is {x.min()!r}"
        )
    pos = x[x > 0].astype(np.float64)
    if pos.size == 0:
        raise ValueError(
            f"dead layer: all {x.size} activations are zero, so no threshold can be derived "
            "from them"
        )
    if max_samples is not None and pos.size > max_samples:
        top = pos.max()
        rng = np.random.default_rng(seed)
        pos = pos[rng.choice(pos.size, size=int(max_samples), replace=False, shuffle=False)]
        if pos.max() < top:
            pos[0] = top
    pos.sort()
    return optimal_threshold(pos, T)

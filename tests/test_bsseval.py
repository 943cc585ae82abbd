"""umx_tune.evaluation.bsseval against museval 0.4.1, computed here on deterministic audio-like signals.

Every finite score must agree with museval's to 1e-6 dB, and NaN (and inf) must fall exactly where
museval's do. The signals are tones with vibrato plus coloured noise, each channel with its own
noise floor: like recorded audio, their delayed channels are linearly independent, so the least-
squares problem behind BSSEval is well posed and both implementations are determined far below
1e-6 dB (on numerically singular problems museval itself is not; see the module docstring).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator

import museval
import numpy as np
import pytest
from scipy.signal import butter, lfilter

from umx_tune.errors import EvaluationError, UmxTuneError
from umx_tune.evaluation import bsseval

RATE = 44100
TOLERANCE_DB = 1e-6
Scores = tuple[np.ndarray, ...]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One BLAS thread: these tests are CPU-bound and share a small machine with other test runs
    (threads spinning on busy cores cost more than they give)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency of umx-tune; without it the tests just run as they are
        yield
        return
    with threadpool_limits(limits=1):
        yield


# --- signals --------------------------------------------------------------------------------------


def _tone(rng: np.random.Generator, n: int) -> np.ndarray:
    """A harmonic tone with vibrato and a slow amplitude envelope, (n,)."""
    t = np.arange(n) / RATE
    f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))) / RATE
    tone = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12))
    return tone * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t) ** 2)


def _coloured(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-passed noise with a random cutoff, (n,)."""
    b, a = butter(4, rng.uniform(0.05, 0.4))
    return lfilter(b, a, rng.standard_normal(n))


def _source(rng: np.random.Generator, n: int, nchan: int) -> np.ndarray:
    """A source image (n, nchan): one tone-plus-noise at a gain per channel, plus per-channel noise."""
    mono = 0.3 * _tone(rng, n) + 0.5 * _coloured(rng, n)
    channels = [
        rng.uniform(0.5, 1.0) * mono + 0.1 * _coloured(rng, n) + 1e-3 * rng.standard_normal(n)
        for _ in range(nchan)
    ]
    return np.stack(channels, axis=1)


def _track(
    seed: int, nsrc: int, seconds: float, nchan: int = 2, quality: str = "good"
) -> tuple[np.ndarray, np.ndarray]:
    """References and estimates (nsrc, nsamples, nchan).

    good: reference + 10 % leakage of each other source + faint noise (SDR around 10 dB).
    poor: a low-passed, attenuated reference + 50 % leakage + coloured noise (SDR near 0 dB).
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE))
    refs = np.stack([_source(rng, n, nchan) for _ in range(nsrc)])
    leak = refs.sum(axis=0, keepdims=True) - refs
    if quality == "good":
        ests = refs + 0.1 * leak + 0.02 * rng.standard_normal(refs.shape)
    else:
        b, a = butter(2, 0.1)
        ests = 0.6 * lfilter(b, a, refs, axis=1) + 0.5 * leak
        ests += 0.2 * np.stack([_source(rng, n, nchan) for _ in range(nsrc)])
    return refs, ests


def _with_silences(refs: np.ndarray, ests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference 1 silent over windows 1-2, estimate 0 silent from 4 s to 5.5 s (window 4 only)."""
    refs, ests = refs.copy(), ests.copy()
    refs[1, 1 * RATE : 3 * RATE] = 0
    ests[0, 4 * RATE : int(5.5 * RATE)] = 0
    return refs, ests


# --- comparisons ----------------------------------------------------------------------------------


def _assert_matches(ours: Scores, theirs: Scores) -> None:
    """Same shapes; NaN and +-inf in the same places; finite values within TOLERANCE_DB."""
    for name, a, b in zip(("SDR", "ISR", "SIR", "SAR"), ours, theirs, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN placement")
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=f"{name}: +inf placement")
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=f"{name}: -inf placement")
        finite = np.isfinite(b)
        diff = np.max(np.abs(a[finite] - b[finite]), initial=0.0)
        assert diff <= TOLERANCE_DB, f"{name}: max difference {diff:.3g} dB"


def _museval(refs: np.ndarray, ests: np.ndarray, win: int = RATE, hop: int = RATE) -> Scores:
    return tuple(museval.evaluate(refs, ests, win=win, hop=hop, mode="v4", padding=True))


# Each case: (seed, nsrc, seconds, nchan, quality, win, hop, transform of the signals)
Case = tuple[
    int, int, float, int, str, int, int, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
]


def _same(refs: np.ndarray, ests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return refs, ests


def _panned(refs: np.ndarray, ests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source 0 hard left (silent right channel), source 1 dual mono (identical channels).

    Both make the Gram matrix exactly singular but for museval's eps * I; common in real stems.
    """
    refs, ests = refs.copy(), ests.copy()
    refs[0, :, 1] = 0
    refs[1, :, 1] = refs[1, :, 0]
    ests[1, :, 1] = ests[1, :, 0]
    return refs, ests


def _short_estimates(refs: np.ndarray, ests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return refs, ests[:, : refs.shape[1] - 30000]  # museval pads them with zeros


def _long_estimates(refs: np.ndarray, ests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return refs, np.concatenate([ests, ests[:, :5000]], axis=1)  # museval cuts them


CASES: dict[str, Case] = {
    "1 stereo target": (1, 1, 3.0, 2, "good", RATE, RATE, _same),
    "2 stereo targets, 7 s": (2, 2, 7.0, 2, "good", RATE, RATE, _same),
    "2 stereo targets, poor, 4.37 s": (3, 2, 4.37, 2, "poor", RATE, RATE, _same),
    "3 mono targets": (4, 3, 4.0, 1, "good", RATE, RATE, _same),
    "2 stereo targets, silences": (5, 2, 6.2, 2, "good", RATE, RATE, _with_silences),
    "2 stereo targets, short estimates": (6, 2, 4.0, 2, "good", RATE, RATE, _short_estimates),
    "2 stereo targets, long estimates": (7, 2, 3.0, 2, "poor", RATE, RATE, _long_estimates),
    "overlapping windows": (8, 2, 3.0, 2, "good", int(1.5 * RATE), RATE // 2, _same),
    "window longer than the track": (9, 2, 2.5, 2, "poor", 3 * RATE, 3 * RATE, _same),
    "hard-panned and dual-mono sources": (13, 2, 3.0, 2, "good", RATE, RATE, _panned),
    "4 stereo targets, 7 s": (10, 4, 7.0, 2, "good", RATE, RATE, _same),
}
SLOW_CASES: dict[str, Case] = {
    "2 stereo targets, poor, 30 s": (11, 2, 30.0, 2, "poor", RATE, RATE, _same),
}


@functools.cache
def _case(name: str) -> tuple[np.ndarray, np.ndarray, int, int, Scores]:
    """The signals of a case and museval's scores for them, computed once per session."""
    seed, nsrc, seconds, nchan, quality, win, hop, transform = {**CASES, **SLOW_CASES}[name]
    refs, ests = transform(*_track(seed, nsrc, seconds, nchan, quality))
    return refs, ests, win, hop, _museval(refs, ests, win, hop)


# --- equivalence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_matches_museval(name: str) -> None:
    refs, ests, win, hop, expected = _case(name)
    _assert_matches(bsseval.evaluate(refs, ests, win, hop), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_matches_museval_30s(name: str) -> None:
    refs, ests, win, hop, expected = _case(name)
    _assert_matches(bsseval.evaluate(refs, ests, win, hop), expected)


def test_silences_give_nan_windows() -> None:
    refs, ests, win, hop, expected = _case("2 stereo targets, silences")
    sdr = bsseval.evaluate(refs, ests, win, hop)[0]
    assert np.isnan(sdr[:, [1, 2, 4]]).all()  # every target, where any source is silent
    assert np.isfinite(sdr[:, [0, 3, 5]]).all()  # window 5 is only partly silent


def test_float32_and_lists_are_accepted() -> None:
    refs, ests, win, hop, expected = _case("1 stereo target")
    ours = bsseval.evaluate(list(refs.astype(np.float32)), list(ests.astype(np.float32)), win, hop)
    _assert_matches(ours, _museval(refs.astype(np.float32), ests.astype(np.float32)))


def test_pinned_scores() -> None:
    """Scores of a fixed signal as museval 0.4.1 gave them, so a change shows without museval."""
    refs, ests = _track(1, 2, 2.0, 2, "good")
    sdr, isr, sir, sar = bsseval.evaluate(refs, ests)
    np.testing.assert_allclose(
        np.stack([sdr, isr, sir, sar]),
        PINNED,
        rtol=0,
        atol=TOLERANCE_DB,
    )


PINNED = np.array(  # museval.evaluate(*_track(1, 2, 2.0, 2, "good")): SDR, ISR, SIR, SAR
    [
        [[15.7786149203, 15.6133794586], [20.0419530700, 20.1254118800]],
        [[35.7837167582, 35.6508834816], [39.9479702389, 39.9735630641]],
        [[17.3733711789, 17.2406924402], [22.6441814636, 22.7809378347]],
        [[21.0763903442, 20.9375121187], [23.6181624536, 23.6428039442]],
    ]
)


# --- bad inputs -----------------------------------------------------------------------------------


def _pair(nsrc: int = 2, n: int = RATE, nchan: int = 2) -> tuple[np.ndarray, np.ndarray]:
    refs, ests = _track(20, nsrc, n / RATE, nchan)
    return refs, ests


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r, e: (r, e[:, :, :1]), "channels"),
        (lambda r, e: (r, e[:1]), "reference sources but"),
        (lambda r, e: (np.where(np.arange(r.size).reshape(r.shape) == 7, np.nan, r), e), "NaN or infinite"),
        (lambda r, e: (r, np.where(np.arange(e.size).reshape(e.shape) == 9, np.inf, e)), "NaN or infinite"),
        (lambda r, e: (r[:, :0], e), "empty"),
        (lambda r, e: (r, e[:, :0]), "empty"),
        (lambda r, e: (r[0], e[0]), "shaped"),
        (lambda r, e: (r, [e[0], e[1][:100]]), "numeric array"),
    ],
    ids=["channels", "sources", "nan", "inf", "empty references", "empty estimates", "2-D", "ragged"],
)
def test_bad_inputs_raise(mutate: Callable, message: str) -> None:
    refs, ests = mutate(*_pair())
    with pytest.raises(EvaluationError, match=message):
        bsseval.evaluate(refs, ests)


@pytest.mark.parametrize("which", ["references", "estimates"])
def test_silent_source_raises_like_museval(which: str) -> None:
    refs, ests = _pair()
    target = refs if which == "references" else ests
    target[1] = 0
    with pytest.raises(ValueError, match="non-silent"):
        museval.evaluate(refs, ests)
    with pytest.raises(EvaluationError, match="silent over its whole length") as err:
        bsseval.evaluate(refs, ests)
    assert isinstance(err.value, ValueError) and isinstance(err.value, UmxTuneError)


def test_channels_cancelling_count_as_silent_as_in_museval() -> None:
    refs, ests = _pair()
    refs[0, :, 1] = -refs[0, :, 0]
    with pytest.raises(ValueError, match="non-silent"):
        museval.evaluate(refs, ests)
    with pytest.raises(EvaluationError, match="sum to zero"):
        bsseval.evaluate(refs, ests)


@pytest.mark.parametrize(("win", "hop"), [(0, RATE), (RATE, -1), (1.5, RATE), (RATE, True)])
def test_bad_windows_raise(win: object, hop: object) -> None:
    refs, ests = _pair()
    with pytest.raises(EvaluationError, match="positive whole number"):
        bsseval.evaluate(refs, ests, win, hop)  # type: ignore[arg-type]


# --- eval_track -----------------------------------------------------------------------------------


def _stems(
    seed: int, names: list[str], seconds: float, nchan: int = 2
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    refs, ests = _track(seed, len(names), seconds, nchan)
    return dict(zip(names, refs, strict=True)), dict(zip(names, ests, strict=True))


def _store_values(store: museval.TrackStore) -> list[tuple[str, float, str, float]]:
    """(target, time, metric, score) rows of a TrackStore, NaN kept."""
    rows = []
    for target in store.scores["targets"]:
        for frame in target["frames"]:
            for metric, value in frame["metrics"].items():
                rows.append((target["name"], frame["time"], metric, float(value)))
    return rows


def _assert_same_store(ours: museval.TrackStore, theirs: museval.TrackStore) -> None:
    a, b = _store_values(ours), _store_values(theirs)
    assert [row[:3] for row in a] == [row[:3] for row in b]
    va, vb = np.array([row[3] for row in a]), np.array([row[3] for row in b])
    np.testing.assert_array_equal(np.isnan(va), np.isnan(vb))
    # TrackStore rounds to 1e-5 dB: values 1e-9 dB apart may round one step apart
    np.testing.assert_allclose(va, vb, rtol=0, atol=1.01e-5)
    assert ours.df.shape == theirs.df.shape
    assert list(ours.df.columns) == list(theirs.df.columns)


@functools.cache
def _vocals_track() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    refs, ests = _stems(30, ["vocals", "bass", "accompaniment"], 3.3)
    ests["bass"] = ests["bass"][:-20000]  # a short estimate, padded like museval pads it
    return refs, ests


def test_eval_track_fast_equals_museval_with_vocals_accompaniment_pair() -> None:
    refs, ests = _vocals_track()
    fast = bsseval.eval_track(refs, ests, "track", rate=RATE, evaluator="fast")
    slow = bsseval.eval_track(refs, ests, "track", rate=RATE, evaluator="museval")
    _assert_same_store(fast, slow)
    # bass scored together with vocals, then the vocals/accompaniment pair
    assert [t["name"] for t in fast.scores["targets"]] == ["bass", "vocals", "accompaniment"]
    pair = bsseval.evaluate(
        np.stack([refs["vocals"], refs["accompaniment"]]), np.stack([ests["vocals"], ests["accompaniment"]])
    )
    vocals = fast.scores["targets"][1]["frames"]
    assert [float(f["metrics"]["SDR"]) for f in vocals] == pytest.approx(pair[0][0], abs=1e-5)


def test_eval_track_without_pair_scores_all_targets_together() -> None:
    refs, ests = _stems(31, ["drums", "bass", "other"], 2.5, nchan=1)
    ests["unknown"] = ests["drums"]  # an estimate without a reference is ignored, as in museval
    fast = bsseval.eval_track(refs, ests, "t", evaluator="fast", win=0.5, hop=0.5)
    slow = bsseval.eval_track(refs, ests, "t", evaluator="museval", win=0.5, hop=0.5)
    _assert_same_store(fast, slow)
    assert [t["name"] for t in fast.scores["targets"]] == ["drums", "bass", "other"]
    assert len(fast.scores["targets"][0]["frames"]) == 5
    fast.validate()  # museval's JSON schema


@pytest.mark.parametrize("evaluator", ["fast", "museval"])
def test_eval_track_single_target_warns_like_museval(evaluator: str) -> None:
    refs, ests = _stems(32, ["drums", "bass"], 1.5)
    with pytest.warns(UserWarning, match="at least two estimates"):
        store = bsseval.eval_track(refs, {"drums": ests["drums"]}, "t", evaluator=evaluator)
    assert store.scores["targets"] == []


def test_eval_track_only_the_pair() -> None:
    refs, ests = _stems(33, ["vocals", "accompaniment"], 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = bsseval.eval_track(refs, ests, "t", evaluator="fast")
    _assert_same_store(fast, bsseval.eval_track(refs, ests, "t", evaluator="museval"))
    assert [t["name"] for t in fast.scores["targets"]] == ["vocals", "accompaniment"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"evaluator": "mir_eval"}, "unknown evaluator"),
        ({"rate": 0}, "rate must be"),
        ({"rate": 44100.0}, "rate must be"),
        ({"win": 1e-6}, "win must be"),
    ],
)
def test_eval_track_bad_options(kwargs: dict, message: str) -> None:
    refs, ests = _stems(34, ["drums", "bass"], 1.0)
    with pytest.raises(EvaluationError, match=message):
        bsseval.eval_track(refs, ests, "t", **kwargs)


def test_eval_track_bad_audio() -> None:
    refs, ests = _stems(35, ["drums", "bass"], 1.0)
    with pytest.raises(EvaluationError, match="channels"):
        bsseval.eval_track(refs, {**ests, "bass": ests["bass"][:, :1]}, "t")
    with pytest.raises(EvaluationError, match="differ in shape"):
        bsseval.eval_track({**refs, "bass": refs["bass"][:-1]}, ests, "t")
    with pytest.raises(EvaluationError, match="shaped"):
        bsseval.eval_track({**refs, "bass": refs["bass"][:, 0]}, ests, "t")

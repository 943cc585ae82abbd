"""The synthetic dataset's music: one small song per track, rendered as four int16 sources.

Every track is a small song with a random key, tempo and chord progression shared by four
sources, so that they overlap in time and frequency and separating them is a real problem:

- vocals: a sung-like line from a source-filter model (band-limited pulse train with vibrato,
  shaped by vowel formants that change per note), in phrases with rests;
- bass: the chord roots as a plucked low harmonic tone;
- drums: kick (pitched-down sine sweep), snare (noise + tone) and hats (high-passed noise)
  on a per-track pattern;
- other: the chords as a pad, rhythmic stabs or an arpeggio.

The mixture is the exact integer sum of the four quantised sources: the track is scaled so that
neither a source nor the mixture can clip, each source is rounded to int16, and the mixture is the
sum of those int16 samples. Everything is drawn from the numpy generator the caller passes, so a
seeded generator gives the same audio, sample for sample. No torch or mlflow import here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

from umx_tune.config import SAMPLE_RATE as _SR
from umx_tune.config import TARGETS

# float64 audio while rendering: mono (nb_samples,) or stereo (nb_channels, nb_samples); channels
# first keeps every per-channel operation contiguous. Only the int16 output is (nb_samples, 2).
_FloatArray = np.ndarray


# --------------------------------------------------------------------------------------------
# One track
# --------------------------------------------------------------------------------------------


def generate_track(rng: np.random.Generator, nb_samples: int) -> dict[str, np.ndarray]:
    """Render one song; returns int16 arrays (nb_samples, 2) for each source and `mixture`.

    `mixture` is exactly the sum of the four int16 sources (no clipping anywhere).
    """
    song = _plan_song(rng, nb_samples)
    room = _Room.draw(rng, nb_samples)
    renderers: dict[str, Callable[[np.random.Generator, _Song, _Room], _FloatArray]] = {
        "vocals": _render_vocals,
        "drums": _render_drums,
        "bass": _render_bass,
        "other": _render_other,
    }
    # Relative loudness (dB RMS), drawn per track around a typical pop balance: the vocals sit
    # on top of the accompaniment without dominating it.
    levels = {"vocals": -19.0, "drums": -20.0, "bass": -21.0, "other": -21.0}
    stems = {}
    for name in TARGETS:
        audio = renderers[name](rng, song, room)
        stems[name] = _normalise_rms(audio, levels[name] + rng.uniform(-2.0, 2.0))
    return _quantise(stems)


def _normalise_rms(audio: _FloatArray, db: float) -> _FloatArray:
    rms = math.sqrt(float(np.vdot(audio, audio)) / audio.size)  # vdot: no temporary array
    return audio * (10 ** (db / 20) / rms) if rms > 1e-12 else audio


def _quantise(stems: dict[str, _FloatArray]) -> dict[str, np.ndarray]:
    """Scale so nothing clips, round each source to int16 and sum them into the mixture.

    stems: float arrays (2, nb_samples) in [-1, 1] full scale. Returns int16 arrays
    (nb_samples, 2), the layout soundfile writes. The headroom (0.98) covers the mixture's
    rounding error (at most 2 LSB for four sources), so the integer sum always fits in int16.
    """
    mix = stems["vocals"] + stems["drums"] + stems["bass"] + stems["other"]
    peak = max(_peak(mix), *(_peak(s) for s in stems.values()))
    scale = 32767.0 * (min(1.0, 0.98 / peak) if peak > 0 else 1.0)
    out = {name: np.rint(stems[name] * scale).astype(np.int16) for name in TARGETS}
    total = np.zeros(mix.shape, dtype=np.int32)
    for name in TARGETS:
        total += out[name]
    assert _peak(total) <= 32767, "headroom too small for an exact integer mixture"
    out["mixture"] = total.astype(np.int16)
    return {name: _interleave(audio) for name, audio in out.items()}


def _interleave(audio: np.ndarray) -> np.ndarray:
    """(nb_channels, nb_samples) -> C-contiguous (nb_samples, nb_channels).

    Column by column: ten times faster than np.ascontiguousarray(audio.T) for two channels.
    """
    out = np.empty(audio.shape[::-1], dtype=audio.dtype)
    for channel, samples in enumerate(audio):
        out[:, channel] = samples
    return out


def _peak(x: np.ndarray) -> float:
    """Largest absolute sample value (without the temporary array of np.abs)."""
    return float(max(x.max(), -x.min()))


# --------------------------------------------------------------------------------------------
# The song plan: key, tempo, chords, arrangement
# --------------------------------------------------------------------------------------------

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
# Common progressions as 0-based scale degrees, one chord per bar.
_PROGRESSIONS = {
    _MAJOR: ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 3, 0, 4)),
    _MINOR: ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4), (0, 3, 6, 2)),
}


@dataclass(frozen=True)
class _Song:
    """What all sources of a track share: time grid, key and chords."""

    nb_samples: int
    beat: float  # seconds per beat
    root: int  # key root pitch class, 0 = C
    scale: tuple[int, ...]  # semitones of the 7 scale degrees above the root
    chords: tuple[int, ...]  # scale degree of each bar's chord root
    seventh: bool  # chords get their diatonic seventh

    @property
    def bar(self) -> float:
        return 4 * self.beat

    @property
    def nb_bars(self) -> int:
        return math.ceil(self.nb_samples / (self.bar * _SR))

    def sample(self, beats: float) -> int:
        """Sample index of a time given in beats from the start."""
        return round(beats * self.beat * _SR)

    def degree_semitones(self, degree: int) -> int:
        """Semitones above the key root of a scale degree (may be negative or above an octave)."""
        return 12 * (degree // 7) + self.scale[degree % 7]

    def chord_degrees(self, bar: int) -> tuple[int, ...]:
        """Scale degrees of the chord in `bar` (a stacked-thirds triad or seventh chord)."""
        first = self.chords[bar % len(self.chords)]
        return tuple(first + 2 * i for i in range(4 if self.seventh else 3))

    def active(self, rng: np.random.Generator, p_mute: float) -> np.ndarray:
        """Per-bar bool: play in this bar. Two-bar sections drop out with p_mute, never the first."""
        sections = rng.random(self.nb_bars // 2 + 1) >= p_mute
        sections[0] = True
        return np.repeat(sections, 2)[: self.nb_bars]


def _plan_song(rng: np.random.Generator, nb_samples: int) -> _Song:
    scale = _MAJOR if rng.random() < 0.6 else _MINOR
    progressions = _PROGRESSIONS[scale]
    return _Song(
        nb_samples=nb_samples,
        beat=60.0 / rng.uniform(90.0, 140.0),
        root=int(rng.integers(12)),
        scale=scale,
        chords=progressions[int(rng.integers(len(progressions)))],
        seventh=bool(rng.random() < 0.3),
    )


def _midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


def _in_octave_above(pitch_class: int, low: int) -> int:
    """The MIDI note of `pitch_class` in [low, low + 12)."""
    return low + (pitch_class - low) % 12


# --------------------------------------------------------------------------------------------
# Shared signal helpers
# --------------------------------------------------------------------------------------------

_TABLE_SIZE = 4096


@functools.lru_cache(maxsize=512)
def _wavetable(nb_harmonics: int, tilt: float) -> np.ndarray:
    """One period of a harmonic tone, harmonic k at amplitude k**-tilt; shape (_TABLE_SIZE + 1,).

    The last sample repeats the first so linear interpolation needs no wrap-around.
    """
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=complex)
    k = np.arange(1, nb_harmonics + 1)
    spectrum[k] = -1j * k**-tilt  # sine phase; an inverse FFT is far cheaper than summing sines
    table = sp_fft.irfft(spectrum, _TABLE_SIZE)
    table /= np.sqrt(np.mean(table**2))  # unit RMS, so tilt does not change loudness
    table = np.append(table, table[0])
    table.flags.writeable = False  # cached and shared
    return table


def _harmonic_table(f0: float, tilt: float, fmax: float) -> np.ndarray:
    """Wavetable for a tone at `f0` Hz band-limited to `fmax` (so it cannot alias)."""
    nb = int(np.clip(min(fmax, 0.45 * _SR) // f0, 1, _TABLE_SIZE // 2 - 1))
    return _wavetable(nb, round(tilt, 2))


def _oscillate(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read `table` at phase `cycles` (in periods, any range) with linear interpolation."""
    pos = (cycles - np.floor(cycles)) * _TABLE_SIZE  # np.mod is several times slower
    index = pos.astype(np.intp)
    frac = pos - index
    return table[index] + frac * (table[index + 1] - table[index])


def _tone(
    rng: np.random.Generator,
    f0s: Sequence[float],
    length: int,
    *,
    attack: float,
    decay: float,
    release: float,
    brightness: float | None,
    fmax: float,
) -> np.ndarray:
    """Harmonic notes (one per f0, e.g. a chord) sharing one envelope; (length + release,).

    With `brightness` (s), crossfades from a bright to a dull spectrum, as a plucked string loses
    its upper harmonics first; without it the spectrum is fixed. Amplitude decays with time
    constant `decay` (s) after a linear attack, and fades out linearly over `release` (s).
    """
    nb_release = round(release * _SR)
    t = np.arange(length + nb_release) / _SR
    bright = np.zeros(len(t))
    dull = np.zeros(len(t)) if brightness is not None else bright
    for f0 in f0s:
        cycles = f0 * t + rng.random()  # random start phase: repeated notes are not identical
        bright += _oscillate(_harmonic_table(f0, 1.0, fmax), cycles)
        if brightness is not None:
            dull += _oscillate(_harmonic_table(f0, 2.5, fmax), cycles)
    env = np.minimum(t / attack, 1.0) * np.exp(-t / decay)
    env[length:] *= np.linspace(1.0, 0.0, nb_release)  # no click at the note-off
    if brightness is None:
        return bright * env
    mix = np.exp(-t / brightness)
    return (dull + mix * (bright - dull)) * env


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix `sound` into `out` at sample `start` (time is the last axis), cut at the end of `out`."""
    length = out.shape[-1]
    if start >= length:
        return
    stop = min(length, start + sound.shape[-1])
    out[..., start:stop] += sound[..., : stop - start]


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, position in [-1 (left), 1 (right)]; (nb_samples,) -> (2, nb_samples)."""
    angle = (position + 1.0) * np.pi / 4
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)])


def _smooth(x: np.ndarray, seconds: float, rate: float = _SR) -> np.ndarray:
    """One-pole low-pass along axis 0 (time constant `seconds`), starting at steady state."""
    a = math.exp(-1.0 / (seconds * rate))
    zi = a * x[:1]  # steady state for the first value, so the output does not start from 0
    y, _ = signal.lfilter([1.0 - a], [1.0, -a], x, axis=0, zi=zi)
    return np.asarray(y)


@dataclass(frozen=True)
class _Room:
    """A track's shared stereo reverb: two decorrelated noise impulse responses, as spectra."""

    spectra: np.ndarray  # (2, nb_fft // 2 + 1) complex64
    nb_fft: int

    @staticmethod
    def draw(rng: np.random.Generator, nb_samples: int) -> _Room:
        rt60 = rng.uniform(0.4, 1.2)
        t = np.arange(round(min(rt60, 0.8) * _SR)) / _SR
        ir = rng.standard_normal((2, len(t))) * np.exp(-6.9 * t / rt60)
        ir[:, : round(0.012 * _SR)] = 0.0  # pre-delay keeps the dry attack clear
        ir = _smooth(ir.T, 1 / (2 * np.pi * 6000)).T  # darker tail, like air absorption
        ir /= np.sqrt(np.sum(ir**2, axis=1, keepdims=True))
        nb_fft = sp_fft.next_fast_len(nb_samples + len(t), real=True)
        # float32 FFTs: twice as fast, and far more precise than the 16-bit output needs.
        return _Room(sp_fft.rfft(ir.astype(np.float32), nb_fft, axis=1), nb_fft)

    def apply(self, dry: np.ndarray, send: float) -> np.ndarray:
        """Dry stereo (2, nb_samples) plus `send` times the stereo reverb of its mono sum."""
        spectrum = sp_fft.rfft((dry[0] + dry[1]).astype(np.float32), self.nb_fft)
        wet = sp_fft.irfft(spectrum[None, :] * self.spectra, self.nb_fft, axis=1)
        return dry + send * wet[:, : dry.shape[1]]


# --------------------------------------------------------------------------------------------
# Vocals: source-filter voice
# --------------------------------------------------------------------------------------------


class _Note(NamedTuple):
    start: int  # sample
    stop: int  # sample (exclusive)
    midi: float
    velocity: float
    vowel: int  # index into _VOWELS


# Formants of sung vowels a, e, i, o, u (alto, after the usual Csound formant table):
# frequencies (Hz), bandwidths (Hz) and levels (dB) of F1..F4.
_VOWELS = np.array(
    [
        [[800, 1150, 2800, 3500], [80, 90, 120, 130], [0, -4, -20, -36]],
        [[400, 1600, 2700, 3300], [60, 80, 120, 150], [0, -24, -30, -35]],
        [[350, 1700, 2700, 3700], [50, 100, 120, 150], [0, -20, -30, -36]],
        [[450, 800, 2830, 3500], [70, 80, 100, 130], [0, -9, -16, -28]],
        [[325, 700, 2530, 3500], [50, 60, 170, 180], [0, -12, -30, -40]],
    ],
    dtype=float,
)


def _render_vocals(rng: np.random.Generator, song: _Song, room: _Room) -> _FloatArray:
    """Sung melody in phrases; (2, nb_samples)."""
    notes = _plan_melody(rng, song)
    f0 = _voice_f0(rng, notes, song.nb_samples)
    gate = np.zeros(song.nb_samples)
    for note in notes:
        gate[note.start : note.stop] = note.velocity
    gate = _smooth(gate, rng.uniform(0.015, 0.03))  # soft onsets and releases
    breath = rng.uniform(0.1, 0.25) * rng.standard_normal(song.nb_samples)
    excitation = (_pulse_train(f0) + breath) * gate
    voice = _formant_filter(excitation, notes, song.nb_samples)
    stereo = _pan(voice, rng.uniform(-0.15, 0.15))
    return room.apply(stereo, rng.uniform(0.1, 0.35))


def _plan_melody(rng: np.random.Generator, song: _Song) -> list[_Note]:
    """Phrases of 1-2 bars separated by rests; notes on the beat grid, chord tones on strong beats."""
    tonic = _in_octave_above(song.root, 55)  # sets the voice's range: tonic-3 .. tonic+11 semitones
    total_beats = song.nb_samples / (song.beat * _SR)
    notes: list[_Note] = []
    # Start at once (or after a short pickup), so that even a one-second track has vocals.
    beat = float(rng.choice([0.0, 0.5]))
    beat = beat if beat < total_beats else 0.0
    degree = int(rng.choice(song.chord_degrees(0)[:3]))
    while beat < total_beats:
        phrase_end = beat + 4 * int(rng.integers(1, 3))
        while beat < phrase_end and beat < total_beats:
            length = float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
            length = min(length, phrase_end - beat)
            degree = _next_degree(rng, song, degree, beat)
            legato = rng.uniform(0.8, 1.0)
            notes.append(
                _Note(
                    start=song.sample(beat),
                    stop=song.sample(beat + length * legato),
                    midi=tonic + song.degree_semitones(degree),
                    velocity=rng.uniform(0.6, 1.0),
                    vowel=int(rng.integers(len(_VOWELS))),
                )
            )
            beat += length
        beat = phrase_end + float(rng.choice([1.0, 2.0, 3.0, 4.0]))  # breathe
    return notes


def _next_degree(rng: np.random.Generator, song: _Song, degree: int, beat: float) -> int:
    """Melodic random walk by small steps in the scale, pulled to chord tones on strong beats."""
    degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
    degree = int(np.clip(degree, -2, 6))
    if beat % 2 == 0 and rng.random() < 0.7:
        bar = int(beat // 4)
        chord = {d % 7 for d in song.chord_degrees(bar)}
        # The nearest chord tone; ties go down, as melodies tend to fall onto chord tones.
        candidates = [d for d in range(degree - 3, degree + 4) if d % 7 in chord and -2 <= d <= 6]
        if candidates:
            degree = min(candidates, key=lambda d: (abs(d - degree), d))
    return degree


def _voice_f0(rng: np.random.Generator, notes: list[_Note], nb_samples: int) -> np.ndarray:
    """Fundamental frequency (Hz) per sample, (nb_samples,): glides, vibrato and slow drift.

    Computed at a control rate of sr / _CONTROL and interpolated: the contour is smooth, and
    this is the cost of one pass instead of a dozen at audio rate.
    """
    rate = _SR / _CONTROL
    ticks = np.arange(nb_samples // _CONTROL + 2) * _CONTROL  # control points, in samples
    starts = np.array([n.start for n in notes])
    pitches = np.array([n.midi for n in notes])
    index = np.clip(np.searchsorted(starts, ticks, side="right") - 1, 0, None)
    # Pitch holds through rests, so the glide to the next note stays short and sung-like.
    midi = _smooth(pitches[index], rng.uniform(0.02, 0.05), rate=rate)
    since_onset = (ticks - starts[index]) / _SR
    vibrato_hz, depth = rng.uniform(5.0, 6.0), rng.uniform(0.25, 0.5)  # depth in semitones
    # Singers start a note straight and let the vibrato grow after ~150 ms.
    vibrato_gain = np.clip((since_onset - 0.15) / 0.25, 0.0, 1.0)
    vibrato = depth * vibrato_gain * np.sin(2 * np.pi * vibrato_hz * ticks / _SR + 2 * np.pi * rng.random())
    drift = np.interp(
        ticks / _SR, np.arange(nb_samples // _SR + 2), rng.normal(0.0, 0.1, nb_samples // _SR + 2)
    )
    f0 = np.asarray(_midi_to_hz(midi + vibrato + drift))
    return np.interp(np.arange(nb_samples), ticks, f0)


_CONTROL = 32  # samples per control point of slowly varying parameters


def _pulse_train(f0: np.ndarray) -> np.ndarray:
    """Band-limited pulse train (all harmonics below 0.45 sr at equal level); (nb_samples,).

    Closed form of sum_{k=1..K} cos(k theta) (Dirichlet kernel); K follows f0 so the highest
    harmonic stays below Nyquist. When K changes, only a harmonic near 20 kHz appears or
    vanishes, ~45 dB below the formant peaks once filtered.
    """
    cycles = np.cumsum(f0) / _SR  # float64: the phase accumulates over the whole track
    # float32 from here on: half the cost, and phase error ~1e-5 rad on a wrapped phase.
    theta = (2 * np.pi * (cycles - np.floor(cycles))).astype(np.float32)
    nb = np.floor(0.45 * _SR / f0).astype(np.float32)
    half = np.sin(theta / 2)
    safe = np.where(np.abs(half) < 1e-9, 1.0, half)
    pulses = np.where(np.abs(half) < 1e-9, nb, np.sin((nb + 0.5) * theta) / (2 * safe) - 0.5)
    # About unit RMS: K unit-amplitude harmonics have an RMS of sqrt(K / 2).
    return np.asarray(pulses / np.sqrt(np.median(nb) / 2), dtype=float)


def _formant_filter(excitation: np.ndarray, notes: list[_Note], nb_samples: int) -> np.ndarray:
    """Shape `excitation` (nb_samples,) with each note's vowel formants, gliding between notes.

    Done in the STFT domain so the formant frequencies themselves interpolate (a real vowel
    transition) instead of crossfading fixed filters.
    """
    frames = _frames(excitation)  # (nb_frames, _FRAME)
    spec = sp_fft.rfft(frames * _WINDOW, axis=1)
    freqs = sp_fft.rfftfreq(_FRAME, 1 / _SR).astype(np.float32)
    times = np.arange(len(frames)) * (_FRAME // 2) / _SR
    starts = np.array([n.start for n in notes]) / _SR
    vowels = np.array([n.vowel for n in notes])
    index = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, None)
    # (nb_frames, 3, 4): formant frequency, bandwidth and level per frame; glide over ~40 ms.
    params = _smooth(_VOWELS[vowels[index]], 0.04, rate=2 * _SR / _FRAME).astype(np.float32)
    gain = 10 ** (params[:, 2, :] / 20)
    # Glottal source: strong low harmonics falling ~6 dB/octave above ~300 Hz, so the
    # fundamental is present even below F1; the formants then add resonance peaks on top.
    envelope = np.broadcast_to(0.3 / (1.0 + freqs / 300.0), (len(frames), len(freqs))).copy()
    for i in range(params.shape[2]):
        # Magnitude of resonance i (a loop beats a strided sum over the formant axis).
        distance = (freqs[None, :] - params[:, 0, i, None]) / (params[:, 1, i, None] / 2)
        envelope += gain[:, i, None] / np.sqrt(1 + distance**2)
    voice = sp_fft.irfft(spec * envelope, _FRAME, axis=1) * _WINDOW
    return _overlap_add(voice, nb_samples)


# STFT for the formant filter: sqrt-Hann analysis and synthesis windows at 50 % overlap sum to
# one, so an unmodified spectrum reconstructs the input exactly.
_FRAME = 1024
_WINDOW = np.sqrt(signal.get_window("hann", _FRAME)).astype(np.float32)


def _frames(x: np.ndarray) -> np.ndarray:
    """Half-overlapping frames of `x` (nb_samples,), padded by one hop at both ends; (nb_frames, _FRAME)."""
    hop = _FRAME // 2
    nb_hops = -(-len(x) // hop) + 2
    padded = np.zeros(nb_hops * hop, dtype=np.float32)
    padded[hop : hop + len(x)] = x
    halves = padded.reshape(nb_hops, hop)
    # Frame i is hops i and i + 1.
    return np.concatenate([halves[:-1], halves[1:]], axis=1)


def _overlap_add(frames: np.ndarray, nb_samples: int) -> np.ndarray:
    """Inverse of `_frames`: sum the overlapping halves and drop the padding; (nb_samples,)."""
    hop = _FRAME // 2
    halves = np.zeros((len(frames) + 1, hop), dtype=frames.dtype)
    halves[:-1] += frames[:, :hop]
    halves[1:] += frames[:, hop:]
    return halves.reshape(-1)[hop : hop + nb_samples].astype(float)


# --------------------------------------------------------------------------------------------
# Bass
# --------------------------------------------------------------------------------------------

# Onsets in eighth notes within a bar.
_BASS_PATTERNS = ((0,), (0, 4), (0, 2, 4, 6), (0, 1, 2, 3, 4, 5, 6, 7), (0, 3, 4, 7), (0, 3, 6))


def _render_bass(rng: np.random.Generator, song: _Song, room: _Room) -> _FloatArray:
    """Chord roots (sometimes octave or fifth) as a plucked low tone; (2, nb_samples)."""
    pattern = _BASS_PATTERNS[int(rng.integers(len(_BASS_PATTERNS)))]
    active = song.active(rng, 0.1)
    legato, decay = rng.uniform(0.7, 0.95), rng.uniform(0.3, 0.9)
    brightness = rng.uniform(0.04, 0.15)
    out = np.zeros(song.nb_samples)
    steps = list(pattern) + [8]
    for bar in np.flatnonzero(active).tolist():
        pitch_class = (song.root + song.degree_semitones(song.chords[bar % len(song.chords)])) % 12
        root = _in_octave_above(pitch_class, 28)  # E1 .. D#2: 41-78 Hz
        for step, next_step in zip(steps[:-1], steps[1:], strict=True):
            interval = 0 if step == 0 else int(rng.choice([0, 0, 0, 0, 0, 0, 12, 7]))
            length = song.sample((next_step - step) / 2 * legato)
            tone = _tone(
                rng, [float(_midi_to_hz(root + interval))], length,
                attack=0.004, decay=decay, release=0.015, brightness=brightness, fmax=3000.0,
            )  # fmt: skip
            _add(out, song.sample(4 * bar + step / 2), tone * rng.uniform(0.8, 1.0))
    # Bass stays dry and near the centre, as in most mixes.
    return _pan(out, rng.uniform(-0.1, 0.1))


# --------------------------------------------------------------------------------------------
# Drums
# --------------------------------------------------------------------------------------------


def _decay(seconds: float, tau: float) -> np.ndarray:
    t = np.arange(round(seconds * _SR)) / _SR
    return np.exp(-t / tau)


def _kick(rng: np.random.Generator) -> np.ndarray:
    """Sine sweeping down from ~150 Hz to ~50 Hz with a short click; (nb_samples,)."""
    env = _decay(0.4, rng.uniform(0.1, 0.2))
    t = np.arange(len(env)) / _SR
    start, end = rng.uniform(120.0, 180.0), rng.uniform(45.0, 60.0)
    freq = end + (start - end) * np.exp(-t / rng.uniform(0.02, 0.05))
    body = np.sin(2 * np.pi * np.cumsum(freq) / _SR) * env
    click = rng.standard_normal(len(env)) * _decay(0.4, 0.002) * 0.3
    return body + _smooth(click, 1 / (2 * np.pi * 4000))


def _snare(rng: np.random.Generator) -> np.ndarray:
    """Band-passed noise (~0.5-8 kHz, the wires) plus a ~200 Hz drum-head tone; (nb_samples,)."""
    noise_env = _decay(0.3, rng.uniform(0.06, 0.12))
    sos = signal.butter(2, [500.0, 8000.0], btype="bandpass", fs=_SR, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(len(noise_env))) * noise_env
    t = np.arange(len(noise_env)) / _SR
    head = rng.uniform(170.0, 240.0)
    # The head's fundamental and its first (inharmonic) membrane mode.
    tone = np.sin(2 * np.pi * head * t) + 0.5 * np.sin(2 * np.pi * 1.59 * head * t)
    return 1.5 * noise + tone * _decay(0.3, rng.uniform(0.03, 0.07))


def _hat(rng: np.random.Generator, open_hat: bool) -> np.ndarray:
    """High-passed noise burst (> ~7 kHz), short or open; (nb_samples,)."""
    tau = rng.uniform(0.12, 0.2) if open_hat else rng.uniform(0.015, 0.035)
    env = _decay(8 * tau, tau)  # 8 time constants: -70 dB
    sos = signal.butter(4, rng.uniform(6500.0, 8000.0), btype="highpass", fs=_SR, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(len(env))) * env


def _drum_pattern(rng: np.random.Generator) -> dict[str, list[tuple[int, float]]]:
    """(sixteenth step, velocity) per instrument for one bar."""
    kick = [(0, 1.0), (8, 0.95)] + [(s, 0.8) for s in (3, 6, 10, 11, 14) if rng.random() < 0.25]
    snare = [(4, 1.0), (12, 1.0)] + [(s, 0.3) for s in (7, 9, 15) if rng.random() < 0.2]
    hat_step = 1 if rng.random() < 0.4 else 2
    hats = [(s, 0.9 if s % 4 == 0 else 0.6) for s in range(0, 16, hat_step)]
    open_hat = [(14, 0.7)] if rng.random() < 0.4 else []
    hats = [(s, v) for s, v in hats if not open_hat or s != 14]
    return {"kick": sorted(kick), "snare": snare, "hat": hats, "open_hat": open_hat}


def _render_drums(rng: np.random.Generator, song: _Song, room: _Room) -> _FloatArray:
    """Kick, snare and hats on a per-track pattern, each with its own pan; (2, nb_samples)."""
    pattern = _drum_pattern(rng)
    pans = {"kick": 0.0, "snare": rng.uniform(-0.15, 0.15), "hat": rng.uniform(-0.6, 0.6)}
    pans["open_hat"] = pans["hat"]
    # A few variants per instrument, picked per hit, so repeated hits are not sample-identical.
    # Panned once here: placing short stereo hits is far cheaper than panning whole tracks.
    sounds = {
        "kick": [_pan(_kick(rng), pans["kick"]) for _ in range(3)],
        "snare": [_pan(_snare(rng), pans["snare"]) for _ in range(3)],
        "hat": [_pan(0.35 * _hat(rng, False), pans["hat"]) for _ in range(4)],
        "open_hat": [_pan(0.3 * _hat(rng, True), pans["hat"]) for _ in range(2)],
    }
    active = song.active(rng, 0.15)
    out = np.zeros((2, song.nb_samples))
    for name, hits in pattern.items():
        for bar in np.flatnonzero(active).tolist():
            for step, velocity in hits:
                jitter = rng.normal(0.0, 0.004)  # humanised timing
                start = max(0, song.sample(4 * bar + step / 4) + round(jitter * _SR))
                variant = sounds[name][int(rng.integers(len(sounds[name])))]
                _add(out, start, variant * (velocity * rng.uniform(0.85, 1.0)))
    return room.apply(out, rng.uniform(0.03, 0.12))


# --------------------------------------------------------------------------------------------
# Other: chords
# --------------------------------------------------------------------------------------------


def _chord_notes(song: _Song, bar: int) -> list[int]:
    """MIDI notes of the bar's chord, each tone in E3 .. D#4, where the vocal line also sings."""
    return sorted(
        _in_octave_above((song.root + song.degree_semitones(d)) % 12, 52) for d in song.chord_degrees(bar)
    )


def _render_other(rng: np.random.Generator, song: _Song, room: _Room) -> _FloatArray:
    """The chords as a pad, rhythmic stabs or an arpeggio; (2, nb_samples)."""
    style = ("pad", "stabs", "arpeggio")[int(rng.integers(3))]
    active = song.active(rng, 0.1)
    width = rng.uniform(0.3, 0.8)
    if style == "pad":
        out = _pad(rng, song, active, width)
    else:
        out = _plucked_chords(rng, song, active, width, arpeggio=style == "arpeggio")
    return room.apply(out, rng.uniform(0.1, 0.35))


def _pad(rng: np.random.Generator, song: _Song, active: np.ndarray, width: float) -> np.ndarray:
    """Sustained chords, one per bar; (2, nb_samples).

    The chord's voices alternate between two sides panned apart, each side detuned a few cents
    against the other, so the pad is wide without rendering every voice twice.
    """
    attack, cents = rng.uniform(0.05, 0.25), rng.uniform(3.0, 8.0)
    sides = (np.zeros(song.nb_samples), np.zeros(song.nb_samples))
    for bar in np.flatnonzero(active).tolist():
        chord = _chord_notes(song, bar)
        for side, sign in zip(sides, (-1, 1), strict=True):
            f0s = [float(_midi_to_hz(m + sign * cents / 100)) for m in chord[(sign + 1) // 2 :: 2]]
            tone = _tone(
                rng, f0s, song.sample(4),
                attack=attack, decay=4.0, release=0.2, brightness=None, fmax=5000.0,
            )  # fmt: skip
            _add(side, song.sample(4 * bar), tone * 0.5)
    return _pan(sides[0], -width) + _pan(sides[1], width)


def _plucked_chords(
    rng: np.random.Generator, song: _Song, active: np.ndarray, width: float, *, arpeggio: bool
) -> np.ndarray:
    """Chord stabs on an eighth-note pattern, or an arpeggio of the chord; (2, nb_samples)."""
    steps_per_bar = 16 if arpeggio and rng.random() < 0.5 else 8
    step_beats = 4 / steps_per_bar
    if arpeggio:
        onsets: Sequence[int] = range(steps_per_bar)
    else:
        onsets = [(0, 3, 6), (0, 2, 4, 6), (1, 3, 5, 7), (0, 4), (0, 3, 4, 7)][int(rng.integers(5))]
    decay = rng.uniform(0.15, 0.5)
    out = np.zeros((2, song.nb_samples))
    for bar in np.flatnonzero(active).tolist():
        chord = _chord_notes(song, bar)
        for i, step in enumerate(onsets):
            # An arpeggio climbs through the chord and its octave; stabs play the whole chord.
            midis = [chord[i % len(chord)] + 12 * (i // len(chord) % 2)] if arpeggio else chord
            tone = _tone(
                rng, [float(_midi_to_hz(m)) for m in midis], song.sample(step_beats * 0.9),
                attack=0.003, decay=decay, release=0.03, brightness=0.08, fmax=8000.0,
            )  # fmt: skip
            # Successive notes or stabs alternate sides: width without a second layer.
            position = width * (1 if i % 2 else -1) * rng.uniform(0.3, 1.0)
            _add(out, song.sample(4 * bar + step * step_beats), _pan(tone, position) * 0.6)
    return out

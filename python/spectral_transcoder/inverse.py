"""Audio back from a Mel spectrogram: :func:`griffin_lim`, for listening checks.

A Mel spectrogram keeps neither the phase of the STFT nor the detail of the spectrum
inside a Mel band, so audio made from one is an *estimate*: a signal whose Mel, through
the same front end, is close to the given one (docs/griffin-lim.md has the measured
errors). The steps, each the exact inverse of a step of the spec's front end where one
exists:

1. **Units.** ``value * norm_scale - norm_offset`` undoes the normalisation, then
   ``10 ** (v / 10)`` (``log = "db"``) or ``exp(v) - log_floor`` (``log = "ln"``) undoes
   the log. Values at (or, in a transcoded Mel, below) the log floor carry no information
   and become 0.
2. **Mel -> linear frequency.** The spec's own filterbank
   (:func:`spectral_transcoder.tables.mel_filterbank`, the matrix the C++ front end
   multiplies by) is inverted frame by frame, in the domain where the Mel is linear (power
   or magnitude, as the spec says), by a *non-negative* fit: multiplicative updates
   (Lee & Seung 2001) for the generalised Kullback-Leibler divergence, started from the
   back-projection of the Mel through the filterbank. Every bin stays non-negative by
   construction and, because the divergence is relative, quiet bands are fitted as well
   as loud ones (the Mel errors are judged in log units). A clipped pseudo-inverse was
   measured too and rejected: clipping its negative lobes moves the bands (0.45 dB mean
   error on PANN against < 0.01 dB here, before any phase is involved). Within a band the
   result is a smooth guess: any spectrum with the same band sums has the same Mel. Bins
   outside every Mel band (below ``fmin``, above ``fmax``) are 0.
3. **Phase.** Fast Griffin-Lim (Perraudin, Balazs & Søndergaard, WASPAA 2013): alternate
   projections between STFTs with the target magnitude and consistent STFTs (STFTs of a
   signal), with an inertial ``momentum`` step, from a seeded random phase. The STFT is
   the spec's own, sample for sample as the C++ kernel frames it: the same window
   (periodic or symmetric Hann of ``win_length`` centred in ``n_fft``), hop, centring and
   padding (reflect or zeros). The inverse STFT is the least-squares one: windowed
   overlap-add divided by the sum of the squared windows, with reflect-padded samples
   folded back onto the samples they mirror (the exact adjoint of the padding).
4. **Pre-emphasis.** When the spec pre-emphasises (``y[n] = x[n+1] - a x[n]``), the
   estimated ``y`` is integrated back: ``x[n+1] = y[n] + a x[n]`` with ``x[0] = 0``.

The paper's demo (librosa ``mel_to_audio``) fed the dB values to the inversion as if they
were power, inverted another band range than the classifier's (0-16 kHz instead of
50-14 000 Hz), framed with zero instead of reflect padding and started from an unseeded
random phase (docs/conventions.md §8). None of that is reproduced here.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import tables
from ._validation import as_float32_mel
from .errors import InputTypeError, InvalidInputError
from .specs import MelSpec, get_mel_spec

__all__ = ["griffin_lim", "mel_to_linear", "output_length", "db_per_unit"]

#: Multiplicative-update iterations of the Mel -> linear-frequency inversion.
MEL_INVERSION_ITERATIONS = 100

#: Mels louder than this (dB of Mel power, re the unnormalised FFT of full-scale audio) are
#: rejected: nothing audible is within 200 dB of it, and the audio would overflow float32.
MAX_MEL_DB = 400.0

#: Samples whose sum of squared windows is below this fraction of its maximum are barely
#: observed (the first and last 76 samples of ``yamnet``, the only non-centred spec, where
#: the Hann window is < 0.32); their overlap-add denominator is floored here instead of
#: dividing by ~0, which fades them in and out (a floor of 1e-3 left a click of about 7x the
#: signal's peak at the start of voice_male.wav). Every sample of a centred spec is above it.
_NORM_FLOOR = 0.1


# ------------------------------------------------------------------ lengths
def output_length(n_frames: int, spec: str | MelSpec) -> int:
    """Samples of the signal :func:`griffin_lim` returns for ``n_frames`` Mel frames.

    The shortest signal the spec's front end turns into ``n_frames`` frames:
    ``(n_frames - 1) * hop_length`` for centred specs and
    ``(n_frames - 1) * hop_length + win_length`` for the others, plus one sample when the
    spec pre-emphasises (pre-emphasis drops one). For ``yamnet``, whose front end pads
    the signal to whole 96-frame patches hopped by 48, that length analyses back to the
    same frame count only when ``n_frames = 96 + 48 k`` (as :func:`~spectral_transcoder.mel`
    produces); otherwise the re-analysis has more frames, of which the first
    ``n_frames`` correspond.
    """
    spec = get_mel_spec(spec)
    n = (n_frames - 1) * spec.hop_length + (0 if spec.center else spec.win_length)
    return n + (1 if spec.preemphasis else 0)


def _min_frames(spec: MelSpec) -> int:
    """Fewest frames whose :func:`output_length` the front end accepts (reflect padding
    needs more than ``n_fft // 2`` samples)."""
    t = 1
    while output_length(t, spec) < spec.min_samples():
        t += 1
    return t


# ------------------------------------------------------------------ units and Mel inversion
def _undo_log(m: np.ndarray, spec: MelSpec) -> np.ndarray:
    """Spec units -> the Mel values before the log (power or magnitude), float64, >= 0."""
    v = m.astype(np.float64) * spec.norm_scale - spec.norm_offset
    floor = spec.log_floor
    if spec.log == "db":
        lin = 10.0 ** (np.minimum(v, 3000.0) / 10.0)
        # 10 log10(max(x, floor)): a value at the floor stands for anything below it.
        lin[lin <= floor * (1.0 + 1e-3)] = 0.0
    else:
        lin = np.exp(np.minimum(v, 700.0)) - floor
        # ln(x + floor): within float32 rounding of the floor means x = 0.
        lin[lin <= floor * 1e-3] = 0.0
    return lin


class _SparseFilterbank:
    """``s @ fb`` and ``r @ fb.T`` through the non-zeros of a filterbank ``fb`` (n_bins, n_mels).

    A triangular filterbank has about two non-zeros per bin, so a gather and a segmented
    sum (``np.add.reduceat``) do in O(frames x non-zeros) what a dense product does in
    O(frames x bins x bands), and without BLAS, whose worker threads spin-wait and slow
    everything down tenfold on a busy machine (measured on the 2-core development box).
    """

    def __init__(self, fb: np.ndarray) -> None:
        self.n_bins, self.n_mels = fb.shape
        rows, cols = np.nonzero(fb)  # row-major: grouped by bin
        self.rows, self.cols, self.vals = rows, cols, fb[rows, cols]
        self.row_starts, self.row_ids = self._groups(rows)
        order = np.argsort(cols, kind="stable")  # grouped by band
        self.f_rows, self.f_vals = rows[order], self.vals[order]
        self.col_starts, self.col_ids = self._groups(cols[order])

    @staticmethod
    def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return starts, keys[starts]

    def forward(self, s: np.ndarray) -> np.ndarray:
        """(T, n_bins) -> (T, n_mels) = s @ fb."""
        out = np.zeros((s.shape[0], self.n_mels))
        out[:, self.col_ids] = np.add.reduceat(s[:, self.f_rows] * self.f_vals, self.col_starts, axis=1)
        return out

    def adjoint(self, r: np.ndarray) -> np.ndarray:
        """(T, n_mels) -> (T, n_bins) = r @ fb.T."""
        out = np.zeros((r.shape[0], self.n_bins))
        out[:, self.row_ids] = np.add.reduceat(r[:, self.cols] * self.vals, self.row_starts, axis=1)
        return out


def mel_to_linear(mel_values: np.ndarray, spec: str | MelSpec, n_iter: int = MEL_INVERSION_ITERATIONS) -> np.ndarray:
    """Non-negative inverse of the spec's filterbank, frame by frame.

    Args:
        mel_values: ``(..., frames, n_mels)`` Mel values *before* the log (power or
            magnitude, whichever the spec projects through its filterbank), >= 0.
        spec: the :class:`MelSpec` (or preset name) whose filterbank made them.
        n_iter: multiplicative-update iterations (0 = the back-projection alone).

    Returns:
        float64 ``(..., frames, n_fft // 2 + 1)``, non-negative: per frame, the ``s >= 0``
        fitted to ``s @ fb = mel_values`` (``fb = tables.mel_filterbank(spec)``) under the
        generalised Kullback-Leibler divergence, by Lee & Seung's multiplicative updates
        ``s *= ((m / (s @ fb)) @ fb.T) / fb.sum(axis=1)``. Where a non-negative exact
        solution exists (every preset, measured on real audio) it converges to one;
        bins that feed no band are 0.
    """
    spec = get_mel_spec(spec)
    fb = np.asarray(tables.mel_filterbank(spec), dtype=np.float64)  # (n_bins, n_mels)
    op = _SparseFilterbank(fb)
    m = np.asarray(mel_values, dtype=np.float64)
    lead = m.shape[:-1]
    m = m.reshape(-1, m.shape[-1])
    cover = fb.sum(axis=1)  # (n_bins,) how much of each bin the bands see; 0 = a bin no band sees
    cover_safe = np.where(cover > 0, cover, 1.0)
    mass = fb.sum(axis=0)  # (n_mels,) filter mass of each band
    mass_safe = np.where(mass > 0, mass, 1.0)
    out = np.zeros((m.shape[0], fb.shape[0]))
    for a in range(0, m.shape[0], 4096):  # bounded temporaries for long inputs
        mb = m[a : a + 4096]
        # Start: a bin gets the filter-weighted mean, over the bands it feeds, of their
        # per-unit-mass value (a flat spectrum is reproduced exactly).
        s = op.adjoint(mb / mass_safe) / cover_safe
        for _ in range(n_iter):
            approx = op.forward(s)
            ratio = np.divide(mb, approx, out=np.zeros_like(mb), where=approx > 1e-300)
            s *= op.adjoint(ratio) / cover_safe
        out[a : a + 4096] = s
    return out.reshape(*lead, fb.shape[0])


# ------------------------------------------------------------------ the spec's STFT
class _SpecStft:
    """The spec's STFT of a signal ``y`` (after padding and pre-emphasis) of ``n`` samples
    in ``n_frames`` frames, and its least-squares inverse.

    Frame ``t`` multiplies ``y[origin + hop t + i]`` by ``window[i]``, ``0 <= i < n_fft``,
    with ``origin = -n_fft // 2`` (centred) or ``-(n_fft - win_length) // 2`` (not
    centred, so the window's support is ``y[hop t, hop t + win_length)``), exactly as the
    C++ kernel. Indices outside ``[0, n)`` are reflected (centred, ``pad_mode =
    "reflect"``) or zero.
    """

    def __init__(self, spec: MelSpec, n_frames: int, n: int) -> None:
        self.n_fft, self.hop, self.n_frames, self.n = spec.n_fft, spec.hop_length, n_frames, n
        self.window = np.asarray(tables.stft_window(spec), dtype=np.float64)
        origin = -(spec.n_fft // 2) if spec.center else -((spec.n_fft - spec.win_length) // 2)
        span = (n_frames - 1) * spec.hop_length + spec.n_fft  # padded positions any frame reads
        j = origin + np.arange(span)
        if spec.center and spec.pad_mode == "reflect":
            j = np.where(j < 0, -j, j)
            j = np.where(j >= n, 2 * (n - 1) - j, j)
            if (j < 0).any() or (j >= n).any():  # pragma: no cover - guarded by _min_frames
                raise InvalidInputError(f"{n} samples are too few to reflect-pad by {spec.n_fft // 2}")
        self.valid = (j >= 0) & (j < n)
        self.src = np.where(self.valid, j, 0)
        self.span = span
        # Sum of squared windows on each sample of y (padded positions folded back).
        norm = self._fold(self._overlap_add(np.broadcast_to(self.window**2, (1, n_frames, self.n_fft))))[0]
        self.norm = np.maximum(norm, _NORM_FLOOR * norm.max())

    def _overlap_add(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, n_fft) -> (B, span): frame t added at padded position hop t."""
        b, t, n_fft = frames.shape
        hop = self.hop
        k_max = -(-n_fft // hop)
        buf = np.zeros((b, (t + k_max) * hop))
        for k in range(k_max):
            w = min(hop, n_fft - k * hop)
            view = buf[:, k * hop : k * hop + t * hop].reshape(b, t, hop)
            view[:, :, :w] += frames[:, :, k * hop : k * hop + w]
        return buf[:, : self.span]

    def _fold(self, padded: np.ndarray) -> np.ndarray:
        """(B, span) padded positions -> (B, n): each padded sample added onto the sample of
        y it holds (the adjoint of :meth:`_pad`)."""
        b = padded.shape[0]
        idx = (np.arange(b)[:, None] * self.n + self.src[None, :])[:, self.valid]
        return np.bincount(idx.ravel(), weights=padded[:, self.valid].ravel(), minlength=b * self.n).reshape(b, self.n)

    def _pad(self, y: np.ndarray) -> np.ndarray:
        """(B, n) -> (B, span): the padded signal the frames read."""
        return np.where(self.valid[None, :], y[:, self.src], 0.0)

    def stft(self, y: np.ndarray) -> np.ndarray:
        """(B, n) -> complex (B, T, n_fft // 2 + 1)."""
        padded = self._pad(y)
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft, axis=-1)[:, :: self.hop][
            :, : self.n_frames
        ]
        return np.fft.rfft(frames * self.window, axis=-1)

    def istft(self, spectra: np.ndarray) -> np.ndarray:
        """complex (B, T, n_fft // 2 + 1) -> (B, n): the least-squares signal,
        ``fold(OLA(window * irfft)) / fold(OLA(window ** 2))``."""
        frames = np.fft.irfft(spectra, n=self.n_fft, axis=-1) * self.window
        x: np.ndarray = self._fold(self._overlap_add(frames)) / self.norm
        return x


def _deemphasis(y: np.ndarray, a: float) -> np.ndarray:
    """Invert ``y[n] = x[n+1] - a x[n]``: (B, M) -> x (B, M + 1) with ``x[0] = 0``.

    ``x[n+1] = sum_{k <= n} a^(n-k) y[k]``: the convolution of ``y`` with ``a^n``, cut where
    ``|a|^n`` falls below 1e-17 (beyond float64 resolution, so exact in float64), by FFT.
    """
    b, m = y.shape
    x = np.zeros((b, m + 1))
    if abs(a) >= 1.0:  # not a pre-emphasis any preset uses: integrate sample by sample
        for n in range(m):
            x[:, n + 1] = y[:, n] + a * x[:, n]
        return x
    taps = min(m, int(np.ceil(np.log(1e-17) / np.log(abs(a)))) + 1) if a else 1
    h = float(a) ** np.arange(taps)
    size = 1 << int(np.ceil(np.log2(m + taps)))
    x[:, 1:] = np.fft.irfft(np.fft.rfft(y, size, axis=-1) * np.fft.rfft(h, size), size, axis=-1)[:, :m]
    return x


# ------------------------------------------------------------------ Griffin-Lim
def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def griffin_lim(
    mel: object,
    *,
    spec: str | MelSpec,
    n_iter: int = 64,
    momentum: float = 0.99,
    seed: int | None = 0,
    length: int | None = None,
) -> np.ndarray:
    """Audio whose Mel spectrogram (through ``spec``'s front end) approximates ``mel``.

    For listening checks: a true Mel (:func:`~spectral_transcoder.mel`) or a transcoded one
    (:class:`~spectral_transcoder.Transcoder`, :func:`~spectral_transcoder.pinv`), in the
    spec's own units, back to sound. The method is in the module docstring.

    Args:
        mel: ``(..., frames, n_mels)``, time-major (frame ``t`` is centred on sample
            ``hop_length * t``, or starts there for a non-centred spec), in the units of
            ``spec`` (dB for ``pann``; ``ln`` of the Mel magnitude for ``yamnet`` and
            ``yamnet_torchport``; ``(ln + 4.5) / 5`` for ``efficientat``). Leading axes
            are batch axes. Finite values only.
        spec: the :class:`~spectral_transcoder.specs.MelSpec` (or preset name) the Mel is in.
        n_iter: Griffin-Lim iterations; 0 returns the target magnitude with the random
            initial phase (the baseline the iterations improve on).
        momentum: the fast Griffin-Lim inertia, ``0 <= momentum < 1`` (0 = plain
            Griffin-Lim, 0.99 as Perraudin et al. recommend).
        seed: seed of the random initial phase (``None``: a fresh one). The same seed
            gives the same audio.
        length: output samples; ``None`` = :func:`output_length` ``(frames, spec)``, the
            shortest signal with that many frames (``(frames - 1) * hop`` for centred specs,
            ``+ win_length`` for ``yamnet``, ``+ 1`` with pre-emphasis). A longer length is
            zero-padded at the end, a shorter one cut.

    Returns:
        float32 ``(..., samples)`` mono audio at ``spec.sample_rate``, full scale
        (1.0 = 0 dBFS) at the level the Mel says: not normalised, not clipped, so it may
        exceed 1 for a loud Mel. Memory: a few complex STFTs of the whole signal (about
        0.25 GB per minute of audio at 32 kHz); cut long recordings into pieces.

    What comes back and what does not:
        - the Mel itself, closely: re-analysing the output with ``st.mel(audio,
          spec.sample_rate, spec)`` gives the input back within the errors of
          docs/griffin-lim.md (64 iterations, 10-s reference clips: mean absolute error
          0.23-0.38 dB of Mel power for true Mels, 0.23-1.05 dB for transcoded ones;
          about 5 dB with the random initial phase alone);
        - not the phase: it is estimated, so transients are smeared and the waveform
          differs from the original even where the Mel matches;
        - not the spectral detail within a Mel band: the linear spectrum is a smooth
          non-negative fit of the band values (harmonics closer than a band apart merge);
        - not what the spec discards: frequencies outside ``[fmin, fmax]`` are silent,
          levels below the log floor are silence, the very first sample of a
          pre-emphasised spec is 0, and the first and last 76 samples (5 ms) of
          ``yamnet``, where its Hann window is below 0.32, fade in and out;
        - a transcoded Mel that no audio could produce (a CNN's output) is matched only
          as well as a consistent spectrogram can approach it.

    Raises:
        InvalidInputError: ``mel`` is not ``(..., frames, n_mels)`` with the spec's
            ``n_mels``, holds NaN/Inf (the index is named), has fewer frames than the
            spec's shortest input gives, or a bad ``n_iter``/``momentum``/``length``.
        InputTypeError: a non-numeric ``mel`` or non-integer ``n_iter``/``seed``/``length``.
        UnknownSpecError: an unknown preset name.
    """
    spec = get_mel_spec(spec)
    m = as_float32_mel(mel, spec.n_mels, "mel", spec.name)
    n_iter = _check_int(n_iter, "n_iter", 0)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise InputTypeError(f"momentum must be a number, got {type(momentum).__name__}")
    if not 0.0 <= float(momentum) < 1.0:
        raise InvalidInputError(f"momentum must be in [0, 1), got {momentum!r}")
    alpha = float(momentum)
    if seed is not None:
        seed = _check_int(seed, "seed", 0)
    n_frames = m.shape[-2]
    need = _min_frames(spec)
    if n_frames < need:
        raise InvalidInputError(
            f"mel has {n_frames} frame(s) (shape {m.shape}); the {spec.name!r} front end needs at least {need}"
        )
    n_out = output_length(n_frames, spec)
    if length is not None:
        length = _check_int(length, "length", 1)

    lead = m.shape[:-2]
    flat = m.reshape(-1, n_frames, spec.n_mels)
    # 1-2: spec units -> Mel power or magnitude -> linear-frequency power or magnitude.
    mel_lin = _undo_log(flat, spec)
    if mel_lin.size:
        loudest = float(mel_lin.max())
        db = (20.0 if spec.magnitude else 10.0) * np.log10(max(loudest, 1e-300))
        if db > MAX_MEL_DB:
            idx = np.unravel_index(int(np.argmax(mel_lin)), mel_lin.shape)
            where = tuple(int(i) for i in np.unravel_index(np.ravel_multi_index(idx, mel_lin.shape), m.shape))
            raise InvalidInputError(
                f"mel holds {float(m[where]):g} at index {where}: a Mel power of {db:.0f} dB in {spec.name!r} "
                f"units, beyond any sound (the limit is {MAX_MEL_DB:.0f} dB; float32 audio would overflow)"
            )
    lin = mel_to_linear(mel_lin, spec)
    target = lin if spec.magnitude else np.sqrt(lin)  # |X|, (B, T, n_bins)

    # 3: fast Griffin-Lim on the (padded, pre-emphasised) signal the frames read.
    n_sig = n_out - (1 if spec.preemphasis else 0)
    op = _SpecStft(spec, n_frames, n_sig)
    rng = np.random.default_rng(seed)
    phase = np.exp(2j * np.pi * rng.random(target.shape))
    coef = target * phase
    prev = None
    for _ in range(n_iter):
        mag = np.abs(coef)
        unit = np.divide(coef, mag, out=np.ones_like(coef), where=mag > 0)
        proj = op.stft(op.istft(target * unit))
        coef = proj if prev is None else proj + alpha * (proj - prev)
        prev = proj
    mag = np.abs(coef)
    unit = np.divide(coef, mag, out=np.ones_like(coef), where=mag > 0)
    y = op.istft(target * unit)

    # 4: undo the pre-emphasis.
    x = _deemphasis(y, spec.preemphasis) if spec.preemphasis else y
    if length is not None:
        x = x[:, :length] if length <= x.shape[1] else np.pad(x, ((0, 0), (0, length - x.shape[1])))
    return np.ascontiguousarray(x.reshape(*lead, x.shape[-1]), dtype=np.float32)


# ------------------------------------------------------------------ error measures
def db_per_unit(spec: str | MelSpec) -> float:
    """dB of Mel *power* per unit of the spec's log-Mel, well above the log floor: 1 for
    ``10 log10`` power (``pann``), ``20 / ln 10`` for ``ln`` of a magnitude (``yamnet``),
    ``norm_scale * 10 / ln 10`` for a normalised ``ln`` of power (``efficientat``).
    Differences of log-Mels times this are the dB errors docs/griffin-lim.md reports."""
    spec = get_mel_spec(spec)
    if spec.log == "db":
        per = 1.0
    else:
        per = (20.0 if spec.magnitude else 10.0) / np.log(10.0)
    return float(per * spec.norm_scale)

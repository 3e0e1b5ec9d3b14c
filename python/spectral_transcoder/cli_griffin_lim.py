"""``spectral-transcoder griffin-lim``: a Mel spectrogram back to a WAV, for listening checks.

Registered by importing this module (cli.py does, at its end).
"""

from __future__ import annotations

import argparse
import textwrap
import warnings
from pathlib import Path

import numpy as np

from ._cli_base import PROG, Handler, npz_str, register_command
from ._io import atomic_path
from .audio import load_audio
from .errors import InvalidInputError, SpecMismatchError
from .specs import MEL_SPECS, MelSpec, get_mel_spec, spec_from_json

_MEL_KEYS = ("mel", "mel_pinv")


def _setup(p: argparse.ArgumentParser) -> Handler:
    p.epilog = textwrap.dedent(
        f"""\
        examples:
          {PROG} griffin-lim mel.npy -o mel.wav --spec pann
          {PROG} griffin-lim transcoded.npz -o transcoded.wav          # written by `transcode` / `analyze`
          {PROG} griffin-lim birds.wav -o birds-true.wav --spec efficientat
          {PROG} griffin-lim birds.wav -o birds-yamnet.wav --transcoder yamnet
        """
    )
    p.add_argument(
        "input",
        type=Path,
        metavar="INPUT",
        help="a .npy Mel (frames, n_mels) in the units of --spec; an .npz from `transcode` or "
        "`analyze` (its `mel` or `mel_pinv` array and `mel_spec`); or an audio file",
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.wav", help="WAV file to write")
    p.add_argument(
        "--spec",
        default=None,
        choices=sorted(MEL_SPECS),
        help="Mel spec of the input (required for .npy, and for audio without --transcoder)",
    )
    p.add_argument(
        "--transcoder",
        default=None,
        metavar="NAME|PATH",
        help="audio INPUT only: audio -> third-octave levels -> this transcoder (registry name, "
        "'pinv:TARGET' or an .onnx file) -> Mel -> audio, the paper's listening check; "
        "without it, the audio's own Mel (--spec) is inverted",
    )
    p.add_argument("--iterations", type=int, default=64, metavar="N", help="Griffin-Lim iterations")
    p.add_argument("--momentum", type=float, default=0.99, help="fast Griffin-Lim momentum, in [0, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initial phase")
    p.add_argument(
        "--normalize",
        action="store_true",
        help="scale the output to a -1 dBFS peak (default: the level the Mel says, unclipped)",
    )
    return _run


def _check_spec(wanted: str | None, actual: MelSpec, where: str) -> MelSpec:
    if wanted is not None and get_mel_spec(wanted) != actual:
        raise SpecMismatchError(f"--spec {wanted} does not match the Mel spec {actual.name!r} of {where}")
    return actual


def _load_mel(args: argparse.Namespace) -> tuple[np.ndarray, MelSpec, str]:
    """(frames, n_mels) Mel, its spec and a description of where it came from."""
    path: Path = args.input
    if not path.is_file():
        raise InvalidInputError(f"input file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if args.transcoder is not None and suffix in (".npy", ".npz"):
        raise InvalidInputError("--transcoder applies to an audio INPUT; a .npy/.npz INPUT already is a Mel")
    if suffix == ".npy":
        if args.spec is None:
            raise InvalidInputError(f"{str(path)!r}: a .npy Mel needs --spec (one of {', '.join(sorted(MEL_SPECS))})")
        try:
            mel = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InvalidInputError(f"cannot read {str(path)!r} as a .npy array: {exc}") from None
        return mel, get_mel_spec(args.spec), f"Mel {tuple(mel.shape)}"
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in _MEL_KEYS if k in z.files), None)
            if key is None:
                raise InvalidInputError(f"{str(path)!r} has no `mel` or `mel_pinv` array (keys: {', '.join(z.files)})")
            mel = z[key]
            spec_json = npz_str(z, "mel_spec")
        if spec_json:
            spec = spec_from_json(spec_json)
            if not isinstance(spec, MelSpec):
                raise InvalidInputError(f"{str(path)!r}: its mel_spec is not a Mel spec")
            spec = _check_spec(args.spec, spec, str(path))
        elif args.spec is None:
            raise InvalidInputError(f"{str(path)!r} has no mel_spec: give --spec")
        else:
            spec = get_mel_spec(args.spec)
        if mel.ndim == 3:  # layout "chunks": join them as the transcoder's stitched layout does
            from .pinv import stitch_chunks

            mel = stitch_chunks(mel, spec)
        return mel, spec, f"`{key}` {tuple(mel.shape)}"
    # Anything else is read as audio.
    audio, sr = load_audio(path)
    if args.transcoder is None:
        if args.spec is None:
            raise InvalidInputError(f"{str(path)!r}: give --spec (the Mel to invert) or --transcoder")
        from .frontends import mel as mel_of

        spec = get_mel_spec(args.spec)
        return mel_of(audio, sr, spec), spec, f"true {spec.name} Mel of {audio.shape[0] / sr:.3f} s"
    from .analysis import third_octave
    from .models import Transcoder
    from .pinv import PartialChunkWarning

    tr = Transcoder.coerce(args.transcoder)
    spec = _check_spec(args.spec, tr.output_spec, f"the transcoder {tr.model_id}")
    levels = third_octave(audio, sr, tr.input_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialChunkWarning)  # a partial last second is padded
        mel = tr(levels, layout="stitched", partial="pad")
    return mel, spec, f"{audio.shape[0] / sr:.3f} s -> levels {tuple(levels.shape)} -> {tr.model_id} -> Mel"


def _run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from .frontends import mel as mel_of
    from .inverse import db_per_unit, griffin_lim

    if args.output.suffix.lower() != ".wav":
        raise InvalidInputError(f"-o {str(args.output)!r}: the output is a WAV file, name it *.wav")
    mel, spec, what = _load_mel(args)
    if np.ndim(mel) != 2:
        raise InvalidInputError(f"{str(args.input)!r}: expected a Mel of shape (frames, n_mels), got {np.shape(mel)}")
    audio = griffin_lim(mel, spec=spec, n_iter=args.iterations, momentum=args.momentum, seed=args.seed)
    again = mel_of(audio, spec.sample_rate, spec)[: mel.shape[0]]
    err = float(np.mean(np.abs(again - mel)) * db_per_unit(spec))
    gain = ""
    if args.normalize:
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 0:
            audio = audio * np.float32(10 ** (-1 / 20) / peak)
            gain = f", normalised by {20 * np.log10(10 ** (-1 / 20) / peak):+.1f} dB"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output, suffix=".wav") as tmp:  # soundfile takes the format from the suffix
        sf.write(str(tmp), audio, spec.sample_rate, subtype="FLOAT")
    print(
        f"{args.input}: {what} ({spec.name}) -> Griffin-Lim, {args.iterations} iterations -> "
        f"{audio.shape[0] / spec.sample_rate:.3f} s at {spec.sample_rate} Hz{gain}; re-analysed Mel within "
        f"{err:.2f} dB (mean absolute) -> {args.output}"
    )
    return 0


register_command(
    "griffin-lim",
    help="a Mel spectrogram (true or transcoded) back to audio (WAV), for listening checks",
    description=textwrap.dedent(
        """\
        Turn a Mel spectrogram back into audio with fast Griffin-Lim in the Mel spec's own STFT
        (st.griffin_lim; docs/griffin-lim.md). The phase is estimated and the detail inside each
        Mel band is a smooth guess, so this is for listening, not for restoring the recording.
        Writes a 32-bit float WAV at the spec's sample rate and prints how closely the output's
        own Mel matches the input (mean absolute error in dB of Mel power).
        """
    ),
)(_setup)

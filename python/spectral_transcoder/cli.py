"""The ``spectral-transcoder`` command line (also ``python -m spectral_transcoder``).

Subcommands register themselves in :data:`COMMANDS` with :func:`register_command`
(both from :mod:`._cli_base`, which every subcommand module imports), so later ones
(``process``, ``plot``, ``bench``, ``griffin-lim``) plug in without touching the others.
This module defines ``analyze``, ``transcode`` and ``models``, then imports the other
subcommand modules, which registers them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from ._cli_base import COMMANDS, PROG, Command, Handler, HelpFormatter, npz_str, register_command, save_npz
from .audio import load_audio
from .errors import (
    InvalidInputError,
    ModelError,
    SpectralTranscoderError,
    SpectralTranscoderWarning,
    cli_language,
    to_cli_language,
)
from .specs import BAND_SPECS, MEL_SPECS, BandSpec, get_band_spec, spec_from_json

__all__ = ["main", "build_parser", "register_command", "COMMANDS", "Command"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=lambda prog: HelpFormatter(prog, max_help_position=24),
        description=textwrap.dedent(
            """\
            Transcode third-octave spectra (urban noise sensors: 29 bands, one frame per 125 ms)
            into the Mel spectrogram a pretrained audio classifier expects, and run it.

            Levels are dB re full scale unless told otherwise (--db-offset 26 = the paper's
            Cense convention). Arrays are time-major: levels (frames, bands), Mels (frames, n_mels).
            """
        ),
        epilog=f"Run `{PROG} COMMAND --help` for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, formatter_class=HelpFormatter)
        p.set_defaults(_handler=cmd.setup(p))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 = success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Messages suggest options as this command's flags (--partial drop), not as keywords.
    with warnings.catch_warnings(), cli_language(_flags_of(parser, args.command)):
        # The package's warnings (a padded chunk, a guessed CSV header...) are part of the
        # command's report: one plain line each, like the errors, not Python's file:line form.
        warnings.showwarning = _show_warning
        try:
            code = int(args._handler(args) or 0)
            # Flushed here, inside the try: when the reader of a pipe is gone (`... | head`) the
            # write fails now and is handled below, not in the interpreter's exit flush
            # ("Exception ignored ... BrokenPipeError").
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            # The reader has all it wanted: exit quietly, as the Python docs recommend (signal module,
            # "Note on SIGPIPE"): stdout goes to devnull so that the exit flush cannot fail again.
            _stdout_to_devnull()
            return 1
        except (SpectralTranscoderError, OSError) as exc:
            # to_cli_language: the messages of code that spells options as Python keywords
            print(f"{PROG}: error: {to_cli_language(str(exc))}", file=sys.stderr)
            return 1


#: Python keywords whose command-line flag has another name (by argparse ``dest``).
_KEYWORD_DEST = {"max_mask_gap_s": "max_mask_gap", "n_threads": "threads", "band_spec": "spec"}


def _flags_of(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """Python keyword -> the flag of the subcommand ``command`` that sets it (``--spl-offset``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    by_dest: dict[str, str] = {}
    for action in sub.choices[command]._actions:
        if action.option_strings and action.dest != "help":
            long = [o for o in action.option_strings if o.startswith("--")]
            by_dest[action.dest] = (long or action.option_strings)[0]
    return {**by_dest, **{kw: by_dest[dest] for kw, dest in _KEYWORD_DEST.items() if dest in by_dest}}


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a file descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


_python_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    if issubclass(category, SpectralTranscoderWarning):
        print(f"{PROG}: warning: {to_cli_language(str(message))}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)  # type: ignore[arg-type]


# ------------------------------------------------------------------ helpers
def _level_unit(db_offset: float) -> str:
    return "dB re full scale" if db_offset == 0 else f"dB re full scale {db_offset:+g} dB"


def _offsets(offset_db: np.ndarray) -> str:
    o = np.asarray(offset_db, dtype=np.float64).ravel()
    return f"{o[0]:+.2f}" if o.size == 1 else f"{o.min():+.2f}..{o.max():+.2f}"


def _shorter_than_a_chunk(n: int, spec: BandSpec) -> str:
    return (
        f"shorter than one {spec.chunk_duration:g}-s chunk ({n}/{spec.frames_per_chunk} frames = "
        f"{n * spec.frame_period:g} s)"
    )


def _outputs_for(inputs: list[Path], out: Path) -> list[Path]:
    """One input: ``out`` is the file (or an existing folder). Several: ``out`` is a folder."""
    if len(inputs) == 1 and not out.is_dir():
        return [out if out.suffix == ".npz" else out.with_name(out.name + ".npz")]
    if out.suffix == ".npz":
        raise InvalidInputError(f"-o {str(out)!r}: with {len(inputs)} input files, -o must be a folder")
    stems = [p.stem for p in inputs]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise InvalidInputError(f"input files share the names {dup}: their outputs in {str(out)!r} would collide")
    return [out / f"{s}.npz" for s in stems]


def _load_levels(path: Path) -> tuple[np.ndarray, str | None, str]:
    """Levels (frames, bands) from an .npz (its `levels` array, `band_spec` JSON and `source`,
    as `analyze` writes them) or an .npy (the array alone): (levels, band_spec JSON or None, source)."""
    if not path.is_file():
        raise InvalidInputError(f"levels file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - ValueError (pickled, not NumPy), OSError, EOFError...
        raise InvalidInputError(
            f"cannot read levels file {str(path)!r} ({type(exc).__name__}: {exc}): expected an .npz with a "
            "`levels` array (as `analyze` writes) or an .npy holding the levels (frames, bands)"
        ) from None
    if isinstance(loaded, np.ndarray):  # an .npy: the array itself, the convention from --spec/--db-offset
        return loaded, None, str(path)
    with loaded as z:
        if "levels" not in z.files:
            raise InvalidInputError(f"{str(path)!r} has no `levels` array (keys: {', '.join(z.files)})")
        return z["levels"], npz_str(z, "band_spec"), npz_str(z, "source") or str(path)


# ------------------------------------------------------------------ analyze
@register_command(
    "analyze",
    help="audio files -> third-octave levels and PINV Mels (.npz)",
    description=textwrap.dedent(
        """\
        Analyse audio files (wav, flac, ... via soundfile; any sample rate from 8 kHz, resampled,
        with a warning below 28.3 kHz, where the top bands lie above the Nyquist frequency; channels
        averaged to mono; at least one analysis frame, 128 ms) into third-octave levels, and
        transcode them with the pseudo-inverse (PINV) into the Mel spectrogram of --target.
        Writes one .npz per file with:
          levels       (frames, bands) float32, dB re full scale (+ --db-offset)
          mel_pinv     (frames, n_mels) float32, in the target's Mel units, chunks stitched
          band_spec, mel_spec   JSON of the representations used
          source, sample_rate   input file and its sample rate (Hz)
          frame_period          seconds between level frames (0.125 for cense_fast)
          last_chunk_frames     level frames of real audio in the last 1-s chunk
        A partial last second is padded (its last frame repeated) and reported.
        """
    ),
)
def _setup_analyze(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("audio", nargs="+", type=Path, metavar="AUDIO", help="audio file(s) to analyse")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT",
        help="output .npz (one input) or folder (several inputs: OUT/<name>.npz)",
    )
    p.add_argument("--spec", default="cense_fast", choices=sorted(BAND_SPECS), help="third-octave representation")
    p.add_argument("--target", default="pann", choices=sorted(MEL_SPECS), help="Mel representation of the PINV output")
    p.add_argument(
        "--db-offset",
        type=float,
        default=0.0,
        metavar="DB",
        help="dB added to the levels: 0 = dB re full scale, 26 = the paper's Cense convention",
    )
    p.add_argument("--threads", type=int, default=0, metavar="N", help="C++ threads (0 = automatic)")
    return _run_analyze


def _run_analyze(args: argparse.Namespace) -> int:
    from .analysis import third_octave
    from .pinv import PartialChunkWarning, pinv

    spec = dataclasses.replace(get_band_spec(args.spec), db_offset=args.db_offset)
    outs = _outputs_for(list(args.audio), args.output)
    for src, out in zip(args.audio, outs):
        audio, sr = load_audio(src)
        try:
            levels = third_octave(audio, sr, spec, n_threads=args.threads)
        except InvalidInputError as exc:  # too short, a sample rate below the floor: name the file
            raise InvalidInputError(f"{src}: {exc}") from None
        n = levels.shape[-2]
        f = spec.frames_per_chunk
        left = n % f
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PartialChunkWarning)  # reported in the summary line below
            mel = pinv(levels, args.target, band_spec=spec, layout="stitched", partial="pad", n_threads=args.threads)
        mel_spec = MEL_SPECS[args.target]
        save_npz(
            out,
            levels=levels,
            mel_pinv=mel,
            band_spec=np.array(spec.to_json()),
            mel_spec=np.array(mel_spec.to_json()),
            source=np.array(str(src)),
            sample_rate=np.array(sr),
            frame_period=np.array(spec.frame_period),
            last_chunk_frames=np.array(left or f),
        )
        note = (
            f"; last chunk partial ({left}/{f} frames = {left * spec.frame_period:g} s), padded by repeating "
            "its last frame"
            if left
            else ""
        )
        if n < f:  # the whole output rests on a padded chunk: say so, it looks like any other
            note = f"; {_shorter_than_a_chunk(n, spec)}: the only chunk was padded by repeating its last frame"
        print(
            f"{src}: {audio.shape[0] / sr:.3f} s at {sr} Hz -> levels {n} x {spec.n_bands} "
            f"({_level_unit(spec.db_offset)}), mel_pinv {mel.shape[0]} x {mel.shape[1]} ({args.target}){note} "
            f"-> {out}"
        )
    return 0


# ---------------------------------------------------------------- transcode
@register_command(
    "transcode",
    help="third-octave levels (.npz) -> Mels with a transcoder model",
    description=textwrap.dedent(
        """\
        Transcode the `levels` array (frames, bands) of an .npz (as written by `analyze`), or
        the array of an .npy, into the Mel spectrogram of a transcoder's output spec, with its
        PINV and CNN. The level convention comes from the file's `band_spec` (else --spec /
        --db-offset). Writes:
          mel          (frames, n_mels) float32 (layout stitched/concat) or (chunks, T, n_mels)
          mel_spec, band_spec   JSON;  transcoder   model id (name@sha256 prefix)
          source, mel_frame_period, layout, last_chunk_frames
          level_reference, level_offset_db   --reference and the dB it added to the levels
        """
    ),
)
def _setup_transcode(p: argparse.ArgumentParser) -> Handler:
    p.add_argument(
        "levels",
        type=Path,
        metavar="LEVELS",
        help=".npz with a `levels` array (frames, bands) in dB (as `analyze` writes), or an .npy of one",
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.npz", help="output .npz")
    p.add_argument(
        "--transcoder",
        required=True,
        metavar="NAME|PATH",
        help="registry name (see `models list`), 'pinv:TARGET' for the PINV alone, or an .onnx file",
    )
    p.add_argument(
        "--spec",
        default="cense_fast",
        choices=sorted(BAND_SPECS),
        help="band spec of the levels when the file has no `band_spec`",
    )
    p.add_argument(
        "--db-offset",
        type=float,
        default=None,
        metavar="DB",
        help="level convention of the file (overrides its band_spec's): 0 = dBFS, 26 = Cense",
    )
    p.add_argument(
        "--reference",
        default="dBFS",
        choices=["dBFS", "SPL", "auto"],
        help="what the levels are: dBFS = as the file's convention says; SPL = calibrated dB SPL, "
        "--spl-offset is subtracted; auto = scaled like the peak-normalised training audio "
        "(99th percentile of the broadband level -> 0 dB)",
    )
    p.add_argument(
        "--spl-offset",
        type=float,
        default=None,
        metavar="DB",
        help="--reference SPL: the dB SPL that corresponds to 0 dBFS",
    )
    p.add_argument(
        "--layout",
        default="stitched",
        choices=["stitched", "concat", "chunks"],
        help="stitched: chunks joined as the paper does; concat: plain; chunks: (chunks, T, n_mels)",
    )
    p.add_argument(
        "--partial",
        default="pad",
        choices=["pad", "drop", "error"],
        help="what to do with a partial last 1-s chunk (reported either way)",
    )
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="ONNX Runtime threads (default: physical cores)"
    )
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="1-s chunks per ONNX Runtime run")
    return _run_transcode


def _run_transcode(args: argparse.Namespace) -> int:
    from ._validation import as_float32_levels, check_level_range
    from .models import Transcoder
    from .pinv import PartialChunkWarning, pinv_target
    from .reference import apply_reference

    levels, spec_json, source = _load_levels(args.levels)
    # the BandSpec `analyze` records (not checked to be one, as before)
    spec = cast(BandSpec, spec_from_json(spec_json)) if spec_json else get_band_spec(args.spec)
    if args.db_offset is not None:
        spec = dataclasses.replace(spec, db_offset=args.db_offset)
    target = pinv_target(args.transcoder)
    if target is not None:  # into the levels' own band spec, which coerce() would not know
        tr = Transcoder.pinv(target, spec)
    else:
        tr = Transcoder.coerce(args.transcoder, n_threads=args.threads, batch_size=args.batch_size)
    levels = as_float32_levels(levels, spec.n_bands, "levels", spec.name)
    # the same code as st.classify(reference=...) and the archive readers' --reference
    levels, offset_db = apply_reference(levels, spec, args.reference, args.spl_offset)
    check_level_range(levels, spec, where=f"{args.levels}: ")
    n, f = levels.shape[-2], spec.frames_per_chunk
    left = n % f
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialChunkWarning)  # reported below
        mel = tr(levels, band_spec=spec, layout=args.layout, partial=args.partial)
    save_npz(
        args.output,
        mel=mel,
        mel_spec=np.array(tr.output_spec.to_json()),
        band_spec=np.array(spec.to_json()),
        transcoder=np.array(tr.model_id),
        source=np.array(source),
        layout=np.array(args.layout),
        mel_frame_period=np.array(tr.output_spec.frame_period),
        last_chunk_frames=np.array(left or f),
        level_reference=np.array(args.reference),
        level_offset_db=np.asarray(offset_db),
    )
    note = ""
    if left:
        note = {
            "pad": f"; last chunk partial ({left}/{f} frames), padded",
            "drop": f"; last chunk partial ({left}/{f} frames), dropped",
        }.get(args.partial, "")
    if 0 < n < f:  # no whole chunk at all: the output is all padding, or empty
        note = {
            "pad": f"; {_shorter_than_a_chunk(n, spec)}: the only chunk was padded by repeating its last frame",
            "drop": f"; {_shorter_than_a_chunk(n, spec)}: dropped, the output is empty",
        }.get(args.partial, "")
    ref = "" if args.reference == "dBFS" else f", --reference {args.reference}: {_offsets(offset_db)} dB added"
    print(
        f"{args.levels}: levels {tuple(levels.shape)} ({_level_unit(spec.db_offset)}{ref}) -> {tr.model_id} -> "
        f"mel {tuple(mel.shape)} ({tr.output_spec.name}, {args.layout}){note} -> {args.output}"
    )
    return 0


# ------------------------------------------------------------------- models
@register_command(
    "models",
    help="import, list and describe model files (the registry)",
    description=textwrap.dedent(
        """\
        The model registry maps short names to ONNX files in $SPECTRAL_TRANSCODER_HOME (else
        $XDG_CACHE_HOME/spectral_transcoder or ~/.cache/spectral_transcoder). Classifiers and
        transcoders have separate names. Make a model file with
          python -m training convert KIND SOURCE -o MODEL.onnx
        then register it with `models import MODEL.onnx`. `models list` shows every known name
        and how to get the missing ones.
        """
    ),
)
def _setup_models(p: argparse.ArgumentParser) -> Handler:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    imp = sub.add_parser(
        "import", help="copy an ONNX model file into the registry (records its sha256)", formatter_class=HelpFormatter
    )
    imp.add_argument("path", type=Path, metavar="PATH", help="ONNX file made by `python -m training convert/export`")
    imp.add_argument("--name", default=None, help="short name to register it under (default: the file's own name)")
    imp.set_defaults(_models_handler=_run_models_import)
    ls = sub.add_parser("list", help="list known and available models", formatter_class=HelpFormatter)
    ls.set_defaults(_models_handler=_run_models_list)
    info = sub.add_parser(
        "info",
        help="describe a model: kind, specs, labels, source, sha256, licence, metrics",
        formatter_class=HelpFormatter,
    )
    info.add_argument("model", metavar="NAME|PATH", help="registry name or .onnx file")
    info.add_argument(
        "--kind",
        choices=["classifier", "transcoder"],
        default=None,
        help="namespace to look NAME up in (default: both)",
    )
    info.set_defaults(_models_handler=_run_models_info)
    return lambda args: args._models_handler(args)


def _run_models_import(args: argparse.Namespace) -> int:
    from . import registry

    e = registry.import_model(args.path, name=args.name)
    print(f"imported {e.kind} {e.name!r} (sha256 {e.sha256}) -> {e.path}")
    return 0


def _run_models_list(args: argparse.Namespace) -> int:
    from . import registry

    avail = {(e.kind, e.name): e for e in registry.entries()}
    rows = []
    for k in registry.KNOWN:
        e = avail.pop((k.kind, k.name), None)
        rows.append(
            (k.kind, k.name, f"available ({e.origin})" if e else "missing", str(e.path) if e else k.description)
        )
    for (kind, name), e in sorted(avail.items()):
        rows.append((kind, name, f"available ({e.origin})", str(e.path)))
    rows.sort(key=lambda r: (r[0], r[1]))
    widths = [max(len(r[i]) for r in [*rows, ("KIND", "NAME", "STATUS", "")]) for i in range(3)]
    print(f"registry: {registry.home()}")
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'STATUS':<{widths[2]}}  FILE / WHAT")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    if any(r[2] == "missing" for r in rows):
        print(f"\nFor a missing model, `{PROG} models info NAME` says how to get it.")
    return 0


def _describe(path: Path, expected_sha256: str | None, label: str) -> None:
    from .models import read_metadata
    from .registry import sha256_file
    from .specs import MelSpec, Spec

    check = ""
    if expected_sha256 is not None:  # before parsing: a damaged file may not parse at all
        sha = sha256_file(path)
        if sha != expected_sha256:
            raise ModelError(
                f"{label}: sha256 {sha} of {path} does not match the registry's {expected_sha256}; import it again"
            )
        check = " (matches the registry)"
    meta, sha = read_metadata(path)

    def spec_line(s: Spec | None) -> str:
        if s is None:
            return "-"
        if isinstance(s, MelSpec):
            extra = f", patches of {s.patch_frames} frames" if s.patch_frames else ""
            return f"{s.name} (Mel: {s.sample_rate} Hz, {s.n_mels} bins, {s.chunk_frames} frames per 1-s chunk{extra})"
        return (
            f"{s.name} (bands: {s.sample_rate} Hz, {s.n_bands} bands, {s.frames_per_chunk} frames per chunk, "
            f"db_offset {s.db_offset:g})"
        )

    labels = meta.labels
    first = ", ".join(lb.name for lb in labels[:3]) + (", ..." if len(labels) > 3 else "")
    print(f"{label}")
    print(f"  kind:          {meta.kind}")
    print(f"  name:          {meta.name}")
    print(f"  file:          {path}")
    print(f"  sha256:        {sha}{check}")
    print(f"  input spec:    {spec_line(meta.input_spec)}")
    print(f"  output spec:   {spec_line(meta.output_spec)}")
    print(f"  labels:        {len(labels)}" + (f" ({first})" if labels else ""))
    print(f"  source:        {meta.source or '-'} (sha256 {meta.source_sha256 or '-'})")
    print(f"  licence:       {meta.license or '-'}")
    print(f"  training data: {meta.training_data or '-'}")
    print(f"  metrics:       {json.dumps(meta.metrics, sort_keys=True) if meta.metrics else '-'}")
    if meta.kind == "transcoder":
        has = bool(meta.pinv and meta.pinv.get("matrix") is not None)
        print(f"  pinv matrix:   {'stored in the file' if has else 'computed from the specs'}")


def _run_models_info(args: argparse.Namespace) -> int:
    from . import registry

    p = Path(args.model)
    if p.is_file() or args.model.endswith(".onnx"):
        _describe(p, None, str(p))
        return 0
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    found = [e for e in registry.entries() if e.name == args.model and e.kind in kinds]
    for e in found:
        _describe(e.path, e.sha256, f"{e.kind} {e.name!r} ({e.origin})")
    if found:
        return 0
    # Not available: say how to get it (in every namespace that knows the name).
    known = [k for k in kinds if registry.known(args.model, k)] or kinds[:1]
    raise ModelError("\n".join(registry.how_to_get(args.model, k) for k in known))


# The other subcommands live in their own modules; importing them registers them. Imported last so
# that `--help` lists this module's commands first (they import _cli_base, never this module), in this
# order (hence the isort split).
from . import cli_process as _cli_process  # noqa: E402,F401  (process/classify, plot, bench)

# isort: split
from . import cli_griffin_lim as _cli_griffin_lim  # noqa: E402,F401  (griffin-lim)

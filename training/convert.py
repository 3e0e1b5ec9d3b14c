"""Converters from the official checkpoint formats to self-describing ONNX files.

=================  ==========================================================  =====================
KIND               SOURCE                                                      network
=================  ==========================================================  =====================
``yamnet-tflite``  int8 ``yamnet.tflite`` (per-tensor or per-channel)            :class:`~training.nets.YAMNet`
``yamnet-h5``      Google's Keras ``yamnet.h5`` weights file                     :class:`~training.nets.YAMNet`
``efficientat``    EfficientAT ``mn04_as_mAP_432.pt`` (plain state dict)         :class:`~training.nets.EfficientATMN`
``pann-resnet38``  PANNs ``ResNet38_mAP=0.434.pth`` (state dict under 'model')   :class:`~training.nets.ResNet38`
``pann-cnn14``     PANNs ``Cnn14_mAP=0.431.pth`` (state dict under 'model')      :class:`~training.nets.Cnn14`
``transcoder``     a published CNN transcoder (``mod_conv.*``) + its            :class:`~training.nets.CNNTranscoder`
                   ``<file>_settings.yaml``
=================  ==========================================================  =====================

:func:`build` loads a source into its network and describes it
(:class:`Converted`); :func:`convert` also exports it (:func:`training.export.export_onnx`).
Every torch file is read with ``weights_only=True``; a checkpoint whose keys do
not match the network raises :class:`~training.checkpoints.CheckpointError` naming
the missing / unexpected keys.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_transcoder.errors import ModelError
from spectral_transcoder.metadata import ModelMetadata
from spectral_transcoder.specs import BandSpec, MelSpec, get_band_spec, get_mel_spec

from .checkpoints import CheckpointError, check_source_file, load_state_dict_strict, sha256_file, torch_load
from .export import DEFAULT_OPSET, export_onnx
from .labels import audioset_labels, yamnet_labels
from .nets import Cnn14, CNNTranscoder, EfficientATMN, ResNet38, YAMNet
from .nets.pann import MIN_FRAMES as PANN_MIN_FRAMES

__all__ = [
    "KINDS",
    "Converted",
    "build",
    "convert",
    "transcoder_pinv_matrix",
    "PANN_DOWNLOAD",
]

KINDS = ("yamnet-tflite", "yamnet-h5", "efficientat", "pann-resnet38", "pann-cnn14", "transcoder")

#: Where the official PANN checkpoints are published (docs/conventions.md §7).
PANN_DOWNLOAD = "https://zenodo.org/record/3987831 (files ResNet38_mAP=0.434.pth, Cnn14_mAP=0.431.pth)"
_PANN_OFFICIAL_MD5 = {"pann-resnet38": "bf12f36aaabac4e0855e22d3c3239c1b"}
_PANN_REPORTED_MAP = {"pann-resnet38": 0.434, "pann-cnn14": 0.431}

_LICENSES = {
    "yamnet": "Apache-2.0 (YAMNet weights by Google, tensorflow/models research/audioset/yamnet)",
    "efficientat": "MIT (EfficientAT, (c) 2022 Florian Schmid, github.com/fschmid56/EfficientAT)",
    "pann": "MIT (PANNs, Qiuqiang Kong et al., github.com/qiuqiangkong/audioset_tagging_cnn)",
    "transcoder": "no licence stated by the source repository (github.com/modantailleur/paperSpectralTranscoder)",
}

#: The paper's Table 2 (TAU eval subset) for the published transcoders: MSE(Mel), KL, PtoPa-FC %.
_PAPER_TABLE2 = {
    ("PANN", "logits"): {"mse_mel": 18.56, "kl": 0.000734, "ptopafc_percent": 89.3},
    ("PANN", "mels"): {"mse_mel": 10.14, "kl": 0.013945, "ptopafc_percent": 0.5},
    ("YamNet", "logits"): {"mse_mel": 1.39, "kl": 0.001863, "ptopafc_percent": 85.1},
}


@dataclass
class Converted:
    """A loaded network, its metadata, and how to export it."""

    module: nn.Module
    metadata: ModelMetadata
    example: torch.Tensor
    """An export example input (2, frames, n_mels)."""
    dynamic_frames: bool
    min_frames: int


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _example(frames: int, n_mels: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, frames, n_mels, generator=g)


# -------------------------------------------------------------------- YAMNet
def _build_yamnet(
    kind: str, source: Path, class_map: str | Path | None, labels_csv: str | Path | None, input_spec: str | None
) -> Converted:
    from .yamnet_weights import read_h5, read_tflite

    if class_map is None:
        raise ModelError(
            f"{kind} needs YAMNet's class names: pass --yamnet-class-map yamnet_class_map.csv "
            "(from tensorflow/models research/audioset/yamnet); add --labels class_labels_indices.csv "
            "to record each class's AudioSet index"
        )
    spec_name = input_spec or "yamnet"
    if spec_name not in ("yamnet", "yamnet_torchport"):
        raise ModelError(f"--input-spec must be 'yamnet' or 'yamnet_torchport' for YAMNet, got {spec_name!r}")
    spec = get_mel_spec(spec_name)
    state, info = read_tflite(source) if kind == "yamnet-tflite" else read_h5(source)
    net = YAMNet()
    load_state_dict_strict(net, state, source=str(source))
    lbls, index_note = yamnet_labels(class_map, labels_csv, n_classes=net.n_classes)
    assert spec.patch_frames is not None
    front_end = (
        "official TF front end (yamnet MelSpec)"
        if spec_name == "yamnet"
        else "the Spectral Transcoder paper's torch-port front end (yamnet_torchport MelSpec); same weights"
    )
    meta = ModelMetadata(
        kind="classifier",
        name="yamnet" if spec_name == "yamnet" else "yamnet-torchport",
        input_spec=spec,
        output_spec=None,
        source=source.name,
        source_sha256=sha256_file(source),
        license=_LICENSES["yamnet"],
        labels=lbls,
        training_data="AudioSet (YAMNet by Google; 521 classes)",
        metrics={},
        extra={
            "architecture": "YAMNet (MobileNet v1), BN eps 1e-4, TF-SAME padding",
            "weights": info,
            "label_index": index_note,
            "front_end": front_end,
            "input": "ln(mel + 0.001) patch of 96 frames x 64 bins, time-major",
        },
    )
    return Converted(
        net.eval(), meta, _example(spec.patch_frames, spec.n_mels), dynamic_frames=False, min_frames=spec.patch_frames
    )


# --------------------------------------------------------------- EfficientAT
def _build_efficientat(source: Path, labels_csv: str | Path | None) -> Converted:
    if labels_csv is None:
        raise ModelError(
            "efficientat needs the 527 AudioSet class names: pass --labels class_labels_indices.csv "
            "(EfficientAT's metadata/class_labels_indices.csv)"
        )
    net = EfficientATMN()
    state = torch_load(source, "EfficientAT checkpoint")
    load_state_dict_strict(net, state, source=str(source))
    spec = get_mel_spec("efficientat")
    meta = ModelMetadata(
        kind="classifier",
        name="efficientat-mn04",
        input_spec=spec,
        output_spec=None,
        source=source.name,
        source_sha256=sha256_file(source),
        license=_LICENSES["efficientat"],
        labels=audioset_labels(labels_csv, n_classes=net.n_classes),
        training_data="AudioSet (EfficientAT mn04_as: MobileNetV3 width 0.4, knowledge distillation from PaSST)",
        metrics={"audioset_mAP_reported": 0.432},
        extra={
            "architecture": "EfficientAT MobileNetV3 width 0.4, MLP head, BN eps 1e-3",
            "input": "(ln(mel + 1e-5) + 4.5) / 5, 128 Kaldi bins, any number of frames",
        },
    )
    return Converted(net.eval(), meta, _example(spec.chunk_frames, spec.n_mels), dynamic_frames=True, min_frames=1)


# ---------------------------------------------------------------------- PANN
_PANN_FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")


def _build_pann(kind: str, source: Path, labels_csv: str | Path | None) -> Converted:
    if labels_csv is None:
        raise ModelError(
            f"{kind} needs the 527 AudioSet class names: pass --labels class_labels_indices.csv "
            "(AudioSet's class_labels_indices.csv, as shipped with PANNs)"
        )
    net: nn.Module = ResNet38() if kind == "pann-resnet38" else Cnn14()
    ckpt = torch_load(source, f"PANN {kind[5:]} checkpoint")
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        state = ckpt["model"]
    elif isinstance(ckpt, Mapping) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt  # a bare state dict is accepted too
    else:
        raise CheckpointError(
            f"{source}: expected a PANNs checkpoint (a dict with the state dict under 'model'), "
            f"got {type(ckpt).__name__} with keys {list(ckpt)[:8] if isinstance(ckpt, Mapping) else '-'}"
        )
    # The waveform front end (STFT + Mel matrices) is replaced by the project's own (the `pann` MelSpec).
    load_state_dict_strict(net, state, source=str(source), ignore_prefixes=_PANN_FRONT_END)
    spec = get_mel_spec("pann")
    md5 = _md5(source)
    official = _PANN_OFFICIAL_MD5.get(kind)
    match = None if official is None else md5 == official
    meta = ModelMetadata(
        kind="classifier",
        name=kind,
        input_spec=spec,
        output_spec=None,
        source=source.name,
        source_sha256=sha256_file(source),
        license=_LICENSES["pann"],
        labels=audioset_labels(labels_csv, n_classes=net.n_classes),
        training_data="AudioSet (PANNs, Kong et al. 2020)",
        metrics={"audioset_mAP_reported": _PANN_REPORTED_MAP[kind]} if match else {},
        extra={
            "architecture": f"PANNs {'ResNet38' if kind == 'pann-resnet38' else 'Cnn14'} cut after the log-Mel "
            "extractor (bn0 kept); waveform front end dropped",
            "input": "10 log10(max(mel, 1e-10)) dB, 64 Slaney bins, >= 32 frames",
            "source_md5": md5,
            "official_md5_match": match,
            "download": PANN_DOWNLOAD,
        },
    )
    return Converted(
        net.eval(), meta, _example(spec.chunk_frames, spec.n_mels), dynamic_frames=True, min_frames=PANN_MIN_FRAMES
    )


# ----------------------------------------------------------------- transcoder
class _SettingsLoader:
    """yaml.SafeLoader that reads ``!!python/tuple`` (doce settings files) as lists."""

    @staticmethod
    def load(text: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda ld, node: ld.construct_sequence(node))
        return yaml.load(text, Loader=Loader)


def _doce_fields(name: str) -> dict[str, str]:
    """``key=value`` pairs of a doce identifier file name (``a=1+b=2+...+ts=1_model``)."""
    stem = re.sub(r"_model$", "", name)
    out = {}
    for part in stem.split("+"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def transcoder_pinv_matrix(band_spec: BandSpec, mel_spec: MelSpec) -> tuple[np.ndarray, str]:
    """The folded PINV matrix A (n_mels, n_bands) the published transcoders were trained with.

    Φ⁺ is computed as the reference did, ``torch.linalg.pinv(float32 basis, rcond=1e-15)``,
    then ``spectral_transcoder.pinv.pinv_matrix(..., phi_plus=Φ⁺)`` applies the ReLU and
    the Mel projection. (Before that module exists, the same fold is done here with
    ``spectral_transcoder.tables``.) Returns ``(A, how)``.
    """
    from spectral_transcoder import tables

    basis = torch.tensor(np.asarray(tables.band_basis(band_spec)), dtype=torch.float32)
    phi_plus = torch.linalg.pinv(basis, rcond=1e-15).numpy().astype(np.float64)  # (n_bins, n_bands)
    try:
        from spectral_transcoder.pinv import pinv_matrix
    except ImportError:
        pinv_matrix = None
    if pinv_matrix is not None:
        return np.asarray(pinv_matrix(band_spec, mel_spec, phi_plus=phi_plus), dtype=np.float64), "pinv_matrix"
    fb = tables.mel_filterbank(mel_spec, band_spec.sample_rate, band_spec.frame_length)  # (n_bins, n_mels)
    return fb.T @ np.maximum(phi_plus, 0.0), "tables"


def _build_transcoder(source: Path) -> Converted:
    settings_path = source.with_name(source.name + "_settings.yaml")
    doce = _doce_fields(source.name)
    settings: dict[str, Any] = {}
    if settings_path.is_file():
        try:
            settings = _SettingsLoader.load(settings_path.read_text()) or {}
        except Exception as exc:  # yaml errors
            raise ModelError(f"{settings_path}: cannot parse the settings YAML: {exc}") from exc
        if not isinstance(settings, dict):
            raise ModelError(f"{settings_path}: expected a mapping of settings")
    classifier = settings.get("mels_type") or doce.get("classifier")
    if classifier is None:
        raise ModelError(
            f"{source.name}: cannot tell which classifier this transcoder targets: put its settings file "
            f"{settings_path.name} beside it (its 'mels_type' field names the classifier), or keep the "
            "published doce file name (classifier=...+ts=..._model)"
        )
    if "classifier" in doce and "mels_type" in settings and doce["classifier"] != settings["mels_type"]:
        raise ModelError(
            f"{source.name}: the file name says classifier={doce['classifier']} but "
            f"{settings_path.name} says mels_type={settings['mels_type']}"
        )
    targets = {"PANN": "pann", "YamNet": "yamnet_torchport"}
    if classifier not in targets:
        raise ModelError(f"{source.name}: unsupported classifier {classifier!r} (expected one of {sorted(targets)})")
    model_type = settings.get("model_type", doce.get("transcoder", "cnn_pinv"))
    if model_type != "cnn_pinv":
        raise ModelError(f"{source.name}: only 'cnn_pinv' transcoders are supported, got {model_type!r}")

    def setting(key_yaml: str, key_doce: str, default: int) -> int:
        v = settings.get(key_yaml, doce.get(key_doce, default))
        return default if v is None else int(v)

    n_layers = setting("cnn_nb_layers", "nb_layers", 5)
    channels = setting("cnn_nb_channels", "nb_channels", 64)
    kernel_mel = setting("cnn_kernel_size", "kernel_size", 5)
    dilation = max(1, setting("cnn_dilation", "dilation", 1))
    ts = doce.get("ts")
    prop_logit = doce.get("prop_logit")
    if ts == "0":
        training_kind = "mels"
    elif ts == "1" and prop_logit in (None, "100"):
        training_kind = "logits"
    elif ts is None:
        training_kind = "unknown"
    else:
        training_kind = f"hybrid (prop_logit={prop_logit})"

    net = CNNTranscoder(n_layers=n_layers, channels=channels, kernel_time=3, kernel_mel=kernel_mel, dilation=dilation)
    state = torch_load(source, "transcoder checkpoint")
    load_state_dict_strict(net, state, source=str(source))

    band = get_band_spec("cense_fast")
    mel = get_mel_spec(targets[classifier])
    a, how = transcoder_pinv_matrix(band, mel)
    teacher = "PANN ResNet38" if classifier == "PANN" else "YAMNet (torch port)"
    training = {
        "logits": f"CNN-logits: BCE against the {teacher} teacher's sigmoid outputs on 1-s chunks",
        "mels": "CNN-mels: MSE against the ground-truth Mel",
    }.get(training_kind, training_kind)
    meta = ModelMetadata(
        kind="transcoder",
        name=f"{'pann' if classifier == 'PANN' else 'yamnet'}-cnn-{training_kind.split(' ')[0]}",
        input_spec=band,
        output_spec=mel,
        source=source.name,
        source_sha256=sha256_file(source),
        license=_LICENSES["transcoder"],
        training_data=(
            "TAU Urban Acoustic Scenes 2020 Mobile development set, device a (Zenodo 10.5281/zenodo.3819968); "
            f"teacher {teacher}; {training}"
        ),
        metrics=(
            {"paper_table2": _PAPER_TABLE2[(classifier, training_kind)]}
            if (classifier, training_kind) in _PAPER_TABLE2
            else {}
        ),
        pinv={"matrix": a.tolist(), "phi_plus": "torch.linalg.pinv float32 rcond 1e-15 (reference parity)"},
        extra={
            "architecture": {"kind": "cnn_pinv", **net.config},
            "training_kind": training_kind,
            "classifier": classifier,
            "settings_file": settings_path.name if settings else None,
            "pinv_matrix_from": how,
            "input": "PINV Mel of one 1-s chunk (chunk_frames x n_mels) in the output spec's units",
        },
    )
    return Converted(net.eval(), meta, _example(mel.chunk_frames, mel.n_mels), dynamic_frames=True, min_frames=1)


# --------------------------------------------------------------------- entry
def build(
    kind: str,
    source: str | Path,
    *,
    labels: str | Path | None = None,
    yamnet_class_map: str | Path | None = None,
    input_spec: str | None = None,
) -> Converted:
    """Load ``source`` (a checkpoint of format ``kind``) into its network, with metadata.

    Args:
        kind: one of :data:`KINDS`.
        source: the checkpoint file.
        labels: AudioSet ``class_labels_indices.csv`` (required for efficientat and
            pann-*; optional for YAMNet, where it maps each class to its AudioSet index).
        yamnet_class_map: ``yamnet_class_map.csv`` (required for yamnet-*).
        input_spec: YAMNet only: ``"yamnet"`` (default, the official front end) or
            ``"yamnet_torchport"`` (the paper's front end, same weights).
    """
    if kind not in KINDS:
        raise ModelError(f"unknown KIND {kind!r}; choose one of: {', '.join(KINDS)}")
    src = check_source_file(source, f"{kind} source")
    if input_spec is not None and not kind.startswith("yamnet"):
        raise ModelError(f"--input-spec applies to yamnet-tflite / yamnet-h5 only, not {kind}")
    if yamnet_class_map is not None and not kind.startswith("yamnet"):
        raise ModelError(f"--yamnet-class-map applies to yamnet-tflite / yamnet-h5 only, not {kind}")
    if kind == "transcoder" and labels is not None:
        raise ModelError("a transcoder has no class labels: drop --labels")
    if kind.startswith("yamnet"):
        return _build_yamnet(kind, src, yamnet_class_map, labels, input_spec)
    if kind == "efficientat":
        return _build_efficientat(src, labels)
    if kind.startswith("pann"):
        return _build_pann(kind, src, labels)
    return _build_transcoder(src)


def convert(
    kind: str,
    source: str | Path,
    output: str | Path,
    *,
    labels: str | Path | None = None,
    yamnet_class_map: str | Path | None = None,
    input_spec: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> ModelMetadata:
    """Convert a checkpoint to a self-describing ONNX file at ``output``; returns its metadata.

    See :func:`build` for the arguments; ``opset``/``exporter`` go to
    :func:`training.export.export_onnx`.
    """
    c = build(kind, source, labels=labels, yamnet_class_map=yamnet_class_map, input_spec=input_spec)
    export_onnx(
        c.module,
        c.metadata,
        output,
        example=c.example,
        dynamic_frames=c.dynamic_frames,
        min_frames=c.min_frames,
        opset=opset,
        exporter=exporter,
    )
    return c.metadata

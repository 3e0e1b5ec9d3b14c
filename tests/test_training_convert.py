"""training.convert: official checkpoints -> ONNX, parity with the goldens, and bad input.

Reads ../shared in place through the conftest fixtures. Converted files go to a
session temp dir and each is built once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
h5py = pytest.importorskip("h5py")

from conftest import shared_file, subprocess_env  # noqa: E402
from spectral_transcoder import tables  # noqa: E402
from spectral_transcoder.errors import ModelError  # noqa: E402
from spectral_transcoder.metadata import ModelMetadata  # noqa: E402
from training.checkpoints import CheckpointError  # noqa: E402
from training.cli import main as cli_main  # noqa: E402
from training.convert import build, convert  # noqa: E402
from training.nets import Cnn14, ResNet38, YAMNet  # noqa: E402
from training.yamnet_weights import h5_dataset_paths, read_tflite  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.shared]

REPO = Path(__file__).resolve().parents[1]
TRANSCODERS = {
    "pann-cnn-logits": "classifier=PANN+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3+nb_channels=64"
    "+nb_layers=5+prop_logit=100+step=train+transcoder=cnn_pinv+ts=1_model",
    "pann-cnn-mels": "classifier=PANN+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3+nb_channels=64"
    "+nb_layers=5+step=train+transcoder=cnn_pinv+ts=0_model",
    "yamnet-cnn-logits": "classifier=YamNet+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3"
    "+nb_channels=64+nb_layers=5+prop_logit=100+step=train+transcoder=cnn_pinv+ts=1_model",
}
#: transcoder name -> (golden PINV input key, golden CNN output key, output MelSpec)
TRANSCODER_GOLDEN = {
    "pann-cnn-logits": ("mel_pann_pinv_chunks", "mel_pann_cnn_logits_chunks", "pann"),
    "pann-cnn-mels": ("mel_pann_pinv_chunks", "mel_pann_cnn_mels_chunks", "pann"),
    "yamnet-cnn-logits": ("mel_yamnet_pinv_chunks", "mel_yamnet_cnn_logits_chunks", "yamnet_torchport"),
}
#: Published transcoders vs the goldens (brief: 1e-2 dB; golden README: 1e-2 dB float32 for PANN CNN-logits).
CNN_TOL = 1e-2
#: ONNX Runtime vs PyTorch on the same weights.
ORT_TOL = 1e-4


def _models_dir() -> Path:
    return shared_file("models")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _metadata(path: Path) -> ModelMetadata:
    model = onnx.load(str(path))
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, where=str(path))


def _assert_ort_matches_torch(sess, module, x: np.ndarray, names=("probs", "logits", "embedding")) -> dict:
    """Every output within ORT_TOL (relative to the output's scale when it exceeds 1)."""
    with torch.no_grad():
        ref = module(torch.from_numpy(x))
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    got = sess.run(None, {"mel": x})
    errs = {}
    for name, g, r in zip(names, got, ref):
        assert g.shape == r.shape, name
        err = float(np.max(np.abs(g - r)))
        scale = max(1.0, float(np.max(np.abs(r))))
        assert err <= ORT_TOL * scale, f"{name}: ORT vs torch {err:.3g} (scale {scale:.3g})"
        errs[name] = err
    return errs


class _Converted:
    """Session cache of converted files: (kind, source, options) -> (path, build result)."""

    def __init__(self, root: Path) -> None:
        self.root, self.cache = root, {}

    def __call__(self, kind: str, source: Path, name: str, **kw):
        key = (kind, str(source), tuple(sorted(kw.items())))
        if key not in self.cache:
            c = build(kind, source, **kw)
            out = self.root / f"{name}.onnx"
            from training.export import export_onnx

            export_onnx(
                c.module, c.metadata, out, example=c.example, dynamic_frames=c.dynamic_frames, min_frames=c.min_frames
            )
            self.cache[key] = (out, c)
        return self.cache[key]


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> _Converted:
    return _Converted(tmp_path_factory.mktemp("converted"))


# ------------------------------------------------------------------ transcoders
@pytest.fixture(scope="session", params=sorted(TRANSCODERS))
def transcoder(request, converted):
    src = shared_file("reference", "models", TRANSCODERS[request.param])
    path, c = converted("transcoder", src, request.param)
    return request.param, path, c


def test_transcoder_metadata(transcoder):
    name, path, _c = transcoder
    meta = _metadata(path)
    assert meta.kind == "transcoder" and meta.name == name
    assert meta.input_spec.name == "cense_fast" and meta.output_spec.name == TRANSCODER_GOLDEN[name][2]
    assert meta.license.startswith("no licence stated by the source repository")
    assert len(meta.source_sha256) == 64 and meta.labels == []
    assert np.asarray(meta.pinv["matrix"]).shape == (64, 29)
    assert "rcond 1e-15" in meta.pinv["phi_plus"]
    assert meta.extra["training_kind"] == name.split("-")[-1]
    assert "TAU Urban Acoustic Scenes 2020" in meta.training_data
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["mel_out"]


def test_transcoder_matches_golden(transcoder, golden_clip):
    name, path, c = transcoder
    key_in, key_out, _ = TRANSCODER_GOLDEN[name]
    x = golden_clip[key_in]  # (10, T, 64): the reference PINV output, the CNN's input
    sess = _session(path)
    errs = _assert_ort_matches_torch(sess, c.module, x, names=("mel_out",))
    got = sess.run(None, {"mel": x})[0]
    err = float(np.max(np.abs(got - golden_clip[key_out])))
    print(f"{name}: ORT vs golden {key_out} max |err| = {err:.3g}; ORT vs torch {errs['mel_out']:.3g}")
    assert err <= CNN_TOL


def test_transcoder_pinv_matrix_matches_reference(transcoder, reference_matrices):
    name, path, _c = transcoder
    meta = _metadata(path)
    a = np.asarray(meta.pinv["matrix"])
    fb = tables.mel_filterbank(meta.output_spec, meta.input_spec.sample_rate, meta.input_spec.frame_length)
    a_ref = fb.T @ reference_matrices["tho_basis_pinv_relu"].astype(np.float64)
    rel = float(np.max(np.abs(a - a_ref)) / np.max(np.abs(a_ref)))
    print(f"{name}: A (torch float32 pinv) vs A from tho_basis_pinv_relu: max relative error {rel:.3g}")
    assert rel <= 1e-6


# ---------------------------------------------------------------------- YAMNet
@pytest.fixture(scope="session")
def yamnet_golden() -> dict:
    with np.load(shared_file("reference", "golden", "yamnet_int8_dequant.npz")) as z:
        return dict(z)


@pytest.fixture(scope="session")
def yamnet_tflite(converted):
    m = _models_dir()
    return converted(
        "yamnet-tflite",
        m / "yamnet_int8.tflite",
        "yamnet",
        yamnet_class_map=m / "yamnet_class_map.csv",
        labels=m / "class_labels_indices.csv",
    )


def test_yamnet_tflite_matches_golden(yamnet_tflite, yamnet_golden):
    path, c = yamnet_tflite
    sess = _session(path)
    x = yamnet_golden["patches"]
    _assert_ort_matches_torch(sess, c.module, x)
    probs, logits, emb = sess.run(None, {"mel": x})
    err = float(np.max(np.abs(probs - yamnet_golden["probs"])))
    print(
        f"yamnet_int8.tflite: probs max |err| vs golden = {err:.3g}; "
        f"logits {np.max(np.abs(logits - yamnet_golden['logits'])):.3g}; "
        f"embeddings {np.max(np.abs(emb - yamnet_golden['embeddings'])):.3g}"
    )
    assert err <= 1e-4
    # the torch-port patches through the same body (cross-check array of the golden)
    p2 = sess.run(["probs"], {"mel": yamnet_golden["patches_torchport"]})[0]
    assert np.max(np.abs(p2 - yamnet_golden["probs_torchport"])) <= 1e-4


def test_yamnet_metadata_and_labels(yamnet_tflite):
    path, _ = yamnet_tflite
    meta = _metadata(path)
    assert meta.kind == "classifier" and meta.name == "yamnet" and meta.input_spec.name == "yamnet"
    assert meta.license.startswith("Apache-2.0")
    assert len(meta.labels) == 521
    # YAMNet drops AudioSet classes 1, 2, 12, 32, 33, 277: its labels carry AudioSet indices matched by mid
    idx = [lb.index for lb in meta.labels]
    assert idx[:3] == [0, 3, 4] and sorted(set(range(527)) - set(idx)) == [1, 2, 12, 32, 33, 277]
    assert meta.labels[0].mid == "/m/09x0r" and meta.labels[0].name == "Speech"
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 96 and dims[2].dim_value == 64


def test_yamnet_perchannel_tflite(converted, yamnet_golden):
    m = _models_dir()
    path, c = converted(
        "yamnet-tflite",
        m / "yamnet_int8_perchannel.tflite",
        "yamnet-perchannel",
        yamnet_class_map=m / "yamnet_class_map.csv",
    )
    assert c.metadata.extra["weights"]["quantization"].get("per-channel", 0) > 0
    probs = _session(path).run(["probs"], {"mel": yamnet_golden["patches"]})[0]
    err = float(np.max(np.abs(probs - yamnet_golden["probs_perchannel_tfhub"])))
    print(
        f"yamnet_int8_perchannel.tflite: probs max |err| vs probs_perchannel_tfhub = {err:.3g}; "
        f"vs the per-tensor golden probs {np.max(np.abs(probs - yamnet_golden['probs'])):.3g}"
    )
    assert err <= 1e-4
    # without --labels the indices stay YAMNet's own, and the metadata says so
    assert [lb.index for lb in c.metadata.labels] == list(range(521))
    assert "no class_labels_indices.csv" in c.metadata.extra["label_index"]


def test_yamnet_torchport_input_spec(converted):
    m = _models_dir()
    _, c = converted(
        "yamnet-tflite",
        m / "yamnet_int8.tflite",
        "yamnet-torchport",
        yamnet_class_map=m / "yamnet_class_map.csv",
        input_spec="yamnet_torchport",
    )
    assert c.metadata.input_spec.name == "yamnet_torchport" and c.metadata.name == "yamnet-torchport"


def _write_keras_yamnet_h5(path: Path, sd: dict, *, classifier_group: str = "logits", drop=(), extra=()) -> None:
    """A Keras-2 ``save_weights`` file in the layout of docs/conventions.md §9, from a BN-form state dict."""

    def np_(k):
        return sd[k].detach().numpy().astype(np.float32)

    layers: list[tuple[str, list[tuple[str, np.ndarray]]]] = []

    def bn(keras: str, torch_prefix: str) -> None:
        layers.append(
            (
                f"{keras}/bn",
                [
                    (f"{keras}/bn/beta:0", np_(f"{torch_prefix}.bn.bias")),
                    (f"{keras}/bn/moving_mean:0", np_(f"{torch_prefix}.bn.running_mean")),
                    (f"{keras}/bn/moving_variance:0", np_(f"{torch_prefix}.bn.running_var")),
                ],
            )
        )

    layers.append(("input_1", []))
    layers.append(("layer1/conv", [("layer1/conv/kernel:0", np_("layer1.fused.conv.weight").transpose(2, 3, 1, 0))]))
    bn("layer1/conv", "layer1.fused")
    layers.append(("layer1/relu", []))
    for i in range(2, 15):
        d, p = f"layer{i}/depthwise_conv", f"layer{i}/pointwise_conv"
        dw = np_(f"layer{i}.depthwise_conv.conv.weight").transpose(2, 3, 0, 1)  # (C,1,3,3) -> (3,3,C,1)
        layers.append((d, [(f"{d}/depthwise_kernel:0", dw)]))
        bn(d, f"layer{i}.depthwise_conv")
        layers.append((f"{d}/relu", []))
        layers.append((p, [(f"{p}/kernel:0", np_(f"layer{i}.pointwise_conv.conv.weight").transpose(2, 3, 1, 0))]))
        bn(p, f"layer{i}.pointwise_conv")
        layers.append((f"{p}/relu", []))
    g = classifier_group
    layers.append(("global_average_pooling2d", []))
    layers.append((g, [(f"{g}/kernel:0", np_("classifier.weight").T), (f"{g}/bias:0", np_("classifier.bias"))]))
    layers.append(("activation", []))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4-tf"
        for name, weights in layers:
            grp = f.require_group(name)
            grp.attrs["weight_names"] = np.array([w.encode() for w, _ in weights if f"{name}/{w}" not in drop])
            for wname, value in weights:
                if f"{name}/{wname}" not in drop:
                    grp.create_dataset(wname, data=value)
        for name, shape in extra:
            f.create_dataset(name, data=np.zeros(shape, np.float32))


def test_yamnet_h5_round_trip(tmp_path, converted, yamnet_golden):
    # Dequantised tflite weights written as yamnet.h5: moving_mean 0, moving_variance 1 - 1e-4, beta = folded bias.
    m = _models_dir()
    sd, _ = read_tflite(m / "yamnet_int8.tflite")
    h5 = tmp_path / "yamnet.h5"
    _write_keras_yamnet_h5(h5, sd)
    with h5py.File(h5, "r") as f:
        n = []
        f.visititems(lambda k, o: n.append(k) if isinstance(o, h5py.Dataset) else None)
    assert len(n) == 110 and set(n) == set(h5_dataset_paths())
    path, c = converted("yamnet-h5", h5, "yamnet-h5", yamnet_class_map=m / "yamnet_class_map.csv")
    sess = _session(path)
    x = yamnet_golden["patches"]
    _assert_ort_matches_torch(sess, c.module, x)
    probs = sess.run(["probs"], {"mel": x})[0]
    err = float(np.max(np.abs(probs - yamnet_golden["probs"])))
    print(f"yamnet.h5 round trip: probs max |err| vs golden = {err:.3g}")
    assert err <= 1e-4
    assert c.metadata.extra["weights"]["format"] == "keras-h5"


def test_yamnet_h5_dense_group_name(tmp_path):
    # A Keras-2 rebuild of the current yamnet.py names the classifier group 'dense'.
    torch.manual_seed(0)
    sd = YAMNet().state_dict()
    h5 = tmp_path / "dense.h5"
    _write_keras_yamnet_h5(h5, sd, classifier_group="dense")
    c = build("yamnet-h5", h5, yamnet_class_map=_models_dir() / "yamnet_class_map.csv")
    assert torch.equal(c.module.classifier.weight, sd["classifier.weight"])


def test_yamnet_h5_key_errors(tmp_path):
    torch.manual_seed(0)
    sd = YAMNet().state_dict()
    h5 = tmp_path / "bad.h5"
    _write_keras_yamnet_h5(
        h5,
        sd,
        drop=("layer7/pointwise_conv/bn/layer7/pointwise_conv/bn/moving_mean:0",),
        extra=(("layer15/conv/kernel:0", (3,)),),
    )
    with pytest.raises(CheckpointError) as exc:
        build("yamnet-h5", h5, yamnet_class_map=_models_dir() / "yamnet_class_map.csv")
    msg = str(exc.value)
    assert "missing datasets: layer7/pointwise_conv/bn/layer7/pointwise_conv/bn/moving_mean:0" in msg
    assert "unexpected datasets: layer15/conv/kernel:0" in msg


# ----------------------------------------------------------------- EfficientAT
@pytest.mark.slow
def test_efficientat_matches_golden(converted):
    m = _models_dir()
    path, c = converted(
        "efficientat", m / "mn04_as_mAP_432.pt", "efficientat-mn04", labels=m / "class_labels_indices.csv"
    )
    with np.load(shared_file("reference", "golden", "efficientat_mn04.npz")) as z:
        g = dict(z)
    sess = _session(path)
    for mel_key, probs_key, emb_key in (("mel", "probs", "embedding"), ("mel_1s", "probs_1s", "embedding_1s")):
        x = np.ascontiguousarray(g[mel_key].T[None])  # golden is (mel, time): ONNX input is time-major
        _assert_ort_matches_torch(sess, c.module, x)
        probs, _logits, emb = sess.run(None, {"mel": x})
        err = float(np.max(np.abs(probs[0] - g[probs_key])))
        emb_err = np.max(np.abs(emb[0] - g[emb_key]))
        print(f"efficientat {probs_key}: max |err| vs golden = {err:.3g}; embedding {emb_err:.3g}")
        assert err <= 1e-4
    meta = _metadata(path)
    assert meta.name == "efficientat-mn04" and meta.input_spec.name == "efficientat" and meta.license.startswith("MIT")
    assert len(meta.labels) == 527 and meta.labels[526].name == "Field recording"
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 128


# ------------------------------------------------------------------------ PANN
def _random_pann_checkpoint(path: Path, net: torch.nn.Module) -> dict:
    """Random weights in the official PANNs checkpoint format: all keys (incl. the waveform front end)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000)
        elif k.endswith("running_mean") or k.endswith("bias"):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
        else:
            sd[k] = v.clone()  # default init (already random), keeps activations in range
    front = {
        "spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024, generator=g),
        "spectrogram_extractor.stft.conv_imag.weight": torch.randn(513, 1, 1024, generator=g),
        "logmel_extractor.melW": torch.rand(513, 64, generator=g),
    }
    # PANNs' training checkpoints also pickle plain Python / numpy values beside 'model'.
    model = {**front, **sd}
    torch.save({"iteration": 600000, "model": model, "sampler": {"indexes": np.arange(5)}}, path)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("kind,cls,n_keys", [("pann-cnn14", Cnn14, 84), ("pann-resnet38", ResNet38, 246)])
def test_pann_random_round_trip(tmp_path, kind, cls, n_keys):
    torch.manual_seed(0)
    src = tmp_path / f"{kind}.pth"
    sd = _random_pann_checkpoint(src, cls())
    assert len(sd) == n_keys  # every key of the official file, waveform front end included
    labels = _models_dir() / "class_labels_indices.csv"
    out = tmp_path / f"{kind}.onnx"
    meta = convert(kind, src, out, labels=labels)
    assert meta.name == kind and meta.input_spec.name == "pann" and meta.license.startswith("MIT")
    assert meta.extra["official_md5_match"] in (False, None) and meta.metrics == {}
    net = cls().eval()
    net.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("spectrogram_", "logmel_"))})
    x = np.random.default_rng(0).normal(-40.0, 15.0, size=(1, 32, 64)).astype(np.float32)  # dB-like, T = 32
    _assert_ort_matches_torch(_session(out), net, x)
    dims = onnx.load(str(out), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 64


# ------------------------------------------------------------------ bad input
def test_unknown_kind():
    with pytest.raises(ModelError, match="unknown KIND 'yamnet'.*yamnet-tflite"):
        build("yamnet", _models_dir() / "yamnet_int8.tflite")


def test_missing_labels_say_what_to_pass():
    m = _models_dir()
    with pytest.raises(ModelError, match="--labels class_labels_indices.csv"):
        build("efficientat", m / "mn04_as_mAP_432.pt")
    with pytest.raises(ModelError, match="--yamnet-class-map"):
        build("yamnet-tflite", m / "yamnet_int8.tflite")
    with pytest.raises(ModelError, match="has 521 classes; the model has 527"):
        build("efficientat", m / "mn04_as_mAP_432.pt", labels=m / "yamnet_class_map.csv")
    with pytest.raises(ModelError, match="--input-spec applies to yamnet"):
        build("efficientat", m / "mn04_as_mAP_432.pt", labels=m / "class_labels_indices.csv", input_spec="yamnet")


def test_wrong_kind_for_checkpoint_names_keys():
    m = _models_dir()
    with pytest.raises(CheckpointError) as exc:
        build("pann-cnn14", m / "mn04_as_mAP_432.pt", labels=m / "class_labels_indices.csv")
    assert "missing keys: bn0.weight" in str(exc.value) and "unexpected keys: features.0.0.weight" in str(exc.value)


def _copy_transcoder(tmp_path: Path, state: dict, name: str = TRANSCODERS["pann-cnn-logits"]) -> Path:
    src = tmp_path / name
    torch.save(state, src)
    settings = shared_file("reference", "models", TRANSCODERS["pann-cnn-logits"] + "_settings.yaml")
    (tmp_path / (name + "_settings.yaml")).write_bytes(settings.read_bytes())
    return src


def test_transcoder_missing_and_extra_keys(tmp_path):
    sd = torch.load(shared_file("reference", "models", TRANSCODERS["pann-cnn-logits"]), weights_only=True)
    sd = dict(sd)
    del sd["mod_conv.13.bias"]
    sd["mod_fc.0.weight"] = torch.zeros(6464, 512)  # fast-to-ears' dead layer
    with pytest.raises(CheckpointError) as exc:
        build("transcoder", _copy_transcoder(tmp_path, sd))
    msg = str(exc.value)
    assert "missing keys: mod_conv.13.bias" in msg and "unexpected keys: mod_fc.0.weight" in msg


def test_transcoder_wrong_shape(tmp_path):
    sd = dict(torch.load(shared_file("reference", "models", TRANSCODERS["pann-cnn-logits"]), weights_only=True))
    sd["mod_conv.1.weight"] = torch.zeros(64, 1, 3, 3)
    msg = r"wrong shapes: mod_conv.1.weight \(64, 1, 3, 3\) \(expected \(64, 1, 3, 5\)\)"
    with pytest.raises(CheckpointError, match=msg):
        build("transcoder", _copy_transcoder(tmp_path, sd))


def test_transcoder_without_settings(tmp_path):
    src = tmp_path / "my_transcoder.pt"
    src.write_bytes(shared_file("reference", "models", TRANSCODERS["pann-cnn-logits"]).read_bytes())
    with pytest.raises(ModelError, match="my_transcoder.pt_settings.yaml"):
        build("transcoder", src)


@pytest.mark.parametrize(
    "kind,file,opts",
    [
        ("efficientat", "mn04_as_mAP_432.pt", {"labels": "class_labels_indices.csv"}),
        ("yamnet-tflite", "yamnet_int8.tflite", {"yamnet_class_map": "yamnet_class_map.csv"}),
        ("pann-resnet38", "mn04_as_mAP_432.pt", {"labels": "class_labels_indices.csv"}),
    ],
)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_truncated_or_corrupt_files(tmp_path, kind, file, opts, damage):
    m = _models_dir()
    data = (m / file).read_bytes()
    bad = tmp_path / file
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        bad.write_bytes(b"")
    with pytest.raises(ModelError, match=r"truncated|corrupt|not a|empty"):
        build(kind, bad, **{k: m / v for k, v in opts.items()})


def test_truncated_h5(tmp_path):
    torch.manual_seed(0)
    h5 = tmp_path / "y.h5"
    _write_keras_yamnet_h5(h5, YAMNet().state_dict())
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        build("yamnet-h5", h5, yamnet_class_map=_models_dir() / "yamnet_class_map.csv")


def test_missing_source_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build("transcoder", tmp_path / "nope")


# ------------------------------------------------------------------------- CLI
def test_cli_convert_transcoder(tmp_path, capsys):
    src = shared_file("reference", "models", TRANSCODERS["yamnet-cnn-logits"])
    out = tmp_path / "t.onnx"
    assert cli_main(["convert", "transcoder", str(src), "-o", str(out)]) == 0
    assert "yamnet-cnn-logits" in capsys.readouterr().out
    assert _metadata(out).output_spec.name == "yamnet_torchport"


def test_cli_errors(tmp_path, capsys):
    src = shared_file("reference", "models", TRANSCODERS["yamnet-cnn-logits"])
    assert cli_main(["convert", "pann", str(src), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "unknown KIND 'pann'" in err and "pann-resnet38" in err
    assert cli_main(["convert", "efficientat", str(src), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "--labels" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_help_subprocess():
    r = subprocess.run(
        [sys.executable, "-m", "training", "convert", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(PATH="/usr/bin:/bin"),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for word in ("yamnet-tflite", "pann-resnet38", "--yamnet-class-map", "--input-spec", "zenodo.org/record/3987831"):
        assert word in r.stdout

"""training.nets: architectures, parameter counts, layouts, and ONNX export vs PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spectral_transcoder.metadata import ModelMetadata  # noqa: E402
from spectral_transcoder.specs import get_band_spec, get_mel_spec  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.nets import Cnn14, CNNTranscoder, EfficientATMN, ResNet38, YAMNet, count_parameters  # noqa: E402
from training.nets.yamnet import same_padding  # noqa: E402

pytestmark = pytest.mark.torch


def test_parameter_counts():
    assert count_parameters(CNNTranscoder()) == 186_497
    assert count_parameters(YAMNet()) == 3_740_425  # BN form (bn.weight counted, fixed at 1)
    assert count_parameters(EfficientATMN()) == 983_599
    assert count_parameters(ResNet38()) == 73_783_247


def test_state_dict_layouts():
    cnn = CNNTranscoder().state_dict()
    assert list(cnn) == [f"mod_conv.{i}.{p}" for i in (1, 4, 7, 10, 13) for p in ("weight", "bias")]
    assert tuple(cnn["mod_conv.1.weight"].shape) == (64, 1, 3, 5)
    assert tuple(cnn["mod_conv.13.weight"].shape) == (1, 64, 3, 5)
    y = YAMNet().state_dict()
    assert len(y) == 164 and "layer1.fused.bn.running_var" in y and "layer14.pointwise_conv.conv.weight" in y
    assert len(EfficientATMN().state_dict()) == 312
    # official PANN checkpoints hold 246 / 84 keys including 3 waveform front-end keys
    assert len(ResNet38().state_dict()) == 243
    c14 = Cnn14().state_dict()
    assert len(c14) == 81 and tuple(c14["conv_block6.conv2.weight"].shape) == (2048, 2048, 3, 3)


def test_cnn_config_is_configurable():
    m = CNNTranscoder(n_layers=3, channels=8, kernel_time=5, kernel_mel=3)
    x = torch.randn(2, 17, 64)
    assert m(x).shape == x.shape
    assert count_parameters(m) == (8 * 15 + 8) + (8 * 8 * 15 + 8) + (8 * 15 + 1)
    with pytest.raises(ValueError, match="odd"):
        CNNTranscoder(kernel_mel=4)


def test_cnn_is_subtractive_residual():
    m = CNNTranscoder().eval()
    x = torch.randn(3, 101, 64)
    last = m.mod_conv[13]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.25)
        # convs(x) is the constant 0.25 -> out = x - 0.25 exactly
        assert torch.equal(m(x), x - 0.25)


def test_cnn_uses_replication_padding():
    # A constant input stays constant through replication padding: out = c - f(c) is constant too.
    m = CNNTranscoder().eval()
    with torch.no_grad():
        y = m(torch.full((1, 12, 64), 3.0))
    assert torch.allclose(y, y[0, 0, 0].expand_as(y), atol=1e-5)


@pytest.mark.parametrize("size,stride,expected", [(96, 2, (0, 1)), (64, 2, (0, 1)), (95, 2, (1, 1)), (48, 1, (1, 1))])
def test_tf_same_padding(size, stride, expected):
    assert same_padding(size, 3, stride) == expected
    assert same_padding(size, 1, 1) == (0, 0)


def test_yamnet_shapes():
    m = YAMNet().eval()
    with torch.no_grad():
        out = m(torch.randn(3, 96, 64))
    assert out.probs.shape == (3, 521) and out.logits.shape == (3, 521) and out.embedding.shape == (3, 1024)
    assert torch.allclose(out.probs, torch.sigmoid(out.logits))


def test_efficientat_accepts_any_length():
    m = EfficientATMN().eval()
    with torch.no_grad():
        for t in (1, 2, 100, 333):
            out = m(torch.randn(2, t, 128))
            assert out.probs.shape == (2, 527) and out.embedding.shape == (2, 384)


@pytest.mark.parametrize("make,shape,n_maps", [(YAMNet, (2, 96, 64), 14), (EfficientATMN, (2, 50, 128), 17)])
def test_feature_maps_are_the_forward_pass(make, shape, n_maps):
    # forward_with_maps (texture matching in training) returns forward's output and one
    # map per layer, the last of which pools to the embedding
    torch.manual_seed(0)
    m = make().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        out, maps = m.forward_with_maps(x)
        ref = m(x)
    assert len(maps) == n_maps and all(z.dim() == 4 and z.shape[0] == 2 for z in maps)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.embedding, maps[-1].mean(dim=(2, 3)))


def test_pann_shapes_and_min_frames():
    m = Cnn14().eval()
    with torch.no_grad():
        out = m(torch.randn(1, 32, 64))
    assert out.probs.shape == (1, 527) and out.embedding.shape == (1, 2048)
    assert torch.all(out.embedding >= 0)  # ReLU(fc1)


def _meta(kind, name, **kw):
    if kind == "transcoder":
        return ModelMetadata(
            kind="transcoder",
            name=name,
            input_spec=get_band_spec("cense_fast"),
            output_spec=get_mel_spec("pann"),
            source="random",
            source_sha256="0" * 64,
            license="test",
            **kw,
        )
    return ModelMetadata(
        kind="classifier",
        name=name,
        input_spec=get_mel_spec(kw.pop("spec")),
        output_spec=None,
        source="random",
        source_sha256="0" * 64,
        license="test",
        **kw,
    )


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch.manual_seed(0)
    m = CNNTranscoder().eval()
    path = tmp_path_factory.mktemp("nets") / "cnn.onnx"
    export_onnx(m, _meta("transcoder", "cnn-random"), path, example=torch.randn(2, 101, 64), dynamic_frames=True)
    return m, path


def test_cnn_onnx_file(cnn_onnx):
    _m, path = cnn_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["mel"]
    assert [o.name for o in model.graph.output] == ["mel_out"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 64  # batch, frames dynamic
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.kind == "transcoder" and meta.extra["onnx_outputs"] == ["mel_out"]


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 5), frames=st.integers(1, 130), scale=st.sampled_from([1.0, 40.0]))
def test_cnn_onnx_matches_torch(cnn_onnx, batch, frames, scale):
    m, path = cnn_onnx
    sess = _session(path)
    x = torch.randn(batch, frames, 64, generator=torch.Generator().manual_seed(batch * 1000 + frames)) * scale
    with torch.no_grad():
        ref = m(x).numpy()
    got = sess.run(None, {"mel": x.numpy()})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0)


_SESSIONS: dict = {}


def _session(path):
    if path not in _SESSIONS:
        _SESSIONS[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def test_yamnet_onnx_fixed_frames_and_outputs(tmp_path):
    torch.manual_seed(1)
    m = YAMNet().eval()
    path = export_onnx(
        m,
        _meta("classifier", "yamnet-random", spec="yamnet"),
        tmp_path / "y.onnx",
        example=torch.randn(2, 96, 64),
        dynamic_frames=False,
        min_frames=96,
    )
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["probs", "logits", "embedding"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 96 and dims[2].dim_value == 64
    x = torch.randn(5, 96, 64)
    with torch.no_grad():
        ref = m(x)
    got = _session(path).run(None, {"mel": x.numpy()})
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=1e-4)


def test_torchscript_exporter_fallback_path(tmp_path):
    # The legacy exporter (used when the dynamo exporter fails) gives the same names and values.
    torch.manual_seed(2)
    m = CNNTranscoder(n_layers=3, channels=16).eval()
    path = export_onnx(
        m,
        _meta("transcoder", "cnn-ts"),
        tmp_path / "ts.onnx",
        example=torch.randn(2, 101, 64),
        dynamic_frames=True,
        exporter="torchscript",
    )
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["mel"] and [o.name for o in model.graph.output] == ["mel_out"]
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.extra["exporter"] == "torchscript"
    x = torch.randn(3, 40, 64)
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(_session(path).run(None, {"mel": x.numpy()})[0], ref, atol=1e-4, rtol=0)

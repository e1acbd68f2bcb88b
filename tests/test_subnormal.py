"""Subnormal model weights set to zero at load (pixels/subnormal.py): counted, zeroed wherever
a model stores tensors, and the detector's output unchanged by it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

from dicomnode.pixels.detect import RapidOCRDetector
from dicomnode.pixels.subnormal import (
    SMALLEST_NORMAL,
    flush_subnormals,
    session_without_subnormals,
    sessions_without_subnormals,
)

SUBNORMAL = SMALLEST_NORMAL / 8


def _model(path: Path, weight: np.ndarray, constant: np.ndarray) -> None:
    """y = (x @ weight) + constant, the weight an initializer, the constant a Constant node."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["c"], value=numpy_helper.from_array(constant, "c_value")
            ),
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "c"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return options


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), _options(), providers=["CPUExecutionProvider"])


def test_subnormals_in_initializers_and_constants_are_zeroed_and_counted(tmp_path: Path) -> None:
    weight = np.full((4, 3), 0.5, np.float32)
    weight[0, 0] = weight[2, 1] = SUBNORMAL
    weight[3, 2] = -SUBNORMAL
    constant = np.array([[1.0, SUBNORMAL, 0.0]], np.float32)
    path = tmp_path / "tiny.onnx"
    _model(path, weight, constant)

    model = onnx.load(str(path))
    assert flush_subnormals(model) == 4
    stored = numpy_helper.to_array(model.graph.initializer[0])
    expected = weight.copy()
    expected[np.abs(expected) < SMALLEST_NORMAL] = 0
    assert np.array_equal(stored, expected)  # normal values untouched
    assert np.array_equal(
        numpy_helper.to_array(model.graph.node[0].attribute[0].t), [[1.0, 0.0, 0.0]]
    )
    assert flush_subnormals(model) == 0  # nothing left

    original = _session(path)
    rebuilt = session_without_subnormals(path, _options(), providers=["CPUExecutionProvider"])
    assert isinstance(rebuilt, onnxruntime.InferenceSession)
    assert not rebuilt._model_path  # built from the flushed bytes, not from the file
    assert rebuilt.get_providers() == original.get_providers()
    assert rebuilt.get_session_options().intra_op_num_threads == 1
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    name = original.get_inputs()[0].name
    assert np.array_equal(rebuilt.run(None, {name: x})[0], original.run(None, {name: x})[0])


def test_a_model_without_subnormals_is_loaded_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    _model(path, np.full((4, 3), 0.5, np.float32), np.zeros((1, 3), np.float32))
    session = session_without_subnormals(path, _options(), ["CPUExecutionProvider"])
    assert session._model_path == str(path)


def test_a_wrapper_module_builds_its_sessions_without_subnormals_only_inside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tiny.onnx"
    weight = np.full((4, 3), 0.5, np.float32)
    weight[1, 1] = SUBNORMAL
    _model(path, weight, np.zeros((1, 3), np.float32))
    module = SimpleNamespace(InferenceSession=onnxruntime.InferenceSession)
    with sessions_without_subnormals(module) as built:
        inside = module.InferenceSession(str(path), _options(), providers=["CPUExecutionProvider"])
    assert built == [path]
    assert not inside._model_path  # flushed
    assert module.InferenceSession is onnxruntime.InferenceSession  # given back
    outside = module.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert outside._model_path == str(path)


def test_the_detector_runs_rapidocr_s_model_without_subnormals_and_the_same_output() -> None:
    detector = RapidOCRDetector()
    wrapper = detector._detection.model.session
    source, recogniser = detector.models  # both loaded at start-up
    assert source.is_file() and source.suffix == ".onnx" and recogniser != source
    assert flush_subnormals(onnx.load(str(source))) > 0  # else there is nothing to prove here
    assert not wrapper.session._model_path  # ours: built from the flushed bytes
    assert not detector.engine.text_rec.session.session._model_path
    original = _session(source)
    name = original.get_inputs()[0].name

    image = Image.new("L", (640, 320), 20)
    draw = ImageDraw.Draw(image)
    draw.ellipse((200, 20, 600, 300), fill=110)  # a body
    draw.text((12, 12), "DOE^JANE 1962-04-11", fill=230)
    draw.text((12, 290), "ACC 88213", fill=140)
    planes = np.asarray(image, np.float32)[None, None].repeat(3, axis=1) / 127.5 - 1
    rng = np.random.default_rng(0)
    for x in (planes, rng.uniform(-1, 1, (1, 3, 96, 160)).astype(np.float32)):
        assert np.array_equal(wrapper(x), original.run(None, {name: x})[0])

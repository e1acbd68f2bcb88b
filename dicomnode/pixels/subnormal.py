"""Model weights below float32's normal range (subnormals) set to zero before a model runs.

An x86 core multiplies by a subnormal through a microcode assist, tens of times slower than
an ordinary multiply. rapidocr's PP-OCRv6 detection model carries 255,958 of them, nearly all
in two 1x1 convolutions of its neck (768 to 384 channels); on one core of this project's
machines those two layers took 263 of the model's 396 ms for a 320x640 input. Set to zero,
the model runs 2.9x faster and its output stayed the same to the last bit (a product with a
subnormal weight is far below the rounding step of any sum it joins;
``tests/test_subnormal.py`` compares the outputs).
ONNX Runtime's ``session.set_denormal_as_zero`` barely helps (396 to 350 ms): the kernels
meet these weights packed, as stored. So the stored weights are changed, in memory, as each
session is built (:func:`sessions_without_subnormals`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def flush_subnormals(model: Any) -> int:
    """Set the subnormal float32 values of an ONNX ``ModelProto``'s stored tensors (its
    initializers and Constant nodes, subgraphs included) to zero; returns how many."""
    from onnx import AttributeProto, TensorProto, numpy_helper

    def flush(tensor: Any) -> int:
        if tensor.data_type != TensorProto.FLOAT:
            return 0
        values = numpy_helper.to_array(tensor)
        tiny = (values != 0) & (np.abs(values) < SMALLEST_NORMAL)
        count = int(np.count_nonzero(tiny))
        if count:
            values = values.copy()
            values[tiny] = 0
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        return count

    def walk(graph: Any) -> int:
        count = sum(flush(t) for t in graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == AttributeProto.TENSOR:
                    count += flush(attribute.t)
                elif attribute.type == AttributeProto.GRAPH:
                    count += walk(attribute.g)
                elif attribute.type == AttributeProto.GRAPHS:
                    count += sum(walk(g) for g in attribute.graphs)
        return count

    return walk(model.graph)


def session_without_subnormals(
    path: str | Path, sess_options: Any = None, providers: Any = None, **settings: Any
) -> Any:
    """An ONNX Runtime session of the model at ``path`` with its subnormal weights set to
    zero, built as ``onnxruntime.InferenceSession(path, sess_options, providers, ...)``
    would build it (a model without any is loaded from its path as it is)."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    count = flush_subnormals(model)
    if not count:
        del model
        return onnxruntime.InferenceSession(str(path), sess_options, providers, **settings)
    data = model.SerializeToString()
    del model  # the proto's copy goes before the session's is made
    session = onnxruntime.InferenceSession(data, sess_options, providers, **settings)
    log.info("%s: %d subnormal weights set to zero (same output, faster on x86)", path, count)
    return session


@contextlib.contextmanager
def sessions_without_subnormals(module: Any) -> Iterator[list[Path]]:
    """While inside, ``module.InferenceSession(path, ...)`` (a model wrapper's module, such as
    rapidocr's ONNX Runtime engine, that builds its sessions from a model file) builds them
    with :func:`session_without_subnormals`; yields the model files so built, in order.

    One session per model, not the wrapper's and then ours: building both cost each worker
    ~70 MB of peak memory and ~0.2 s per model. Not thread-safe: for start-up."""
    original = module.InferenceSession
    built: list[Path] = []

    def build(model: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(model, str | Path) or not Path(model).is_file():
            return original(model, *args, **kwargs)
        built.append(Path(model))
        return session_without_subnormals(model, *args, **kwargs)

    module.InferenceSession = build
    try:
        yield built
    finally:
        module.InferenceSession = original

"""Train the bundled example model: an MLP on scikit-learn's digits (8x8 images, 10 classes),
written as ONNX with onnx.helper. Deterministic, no torch.

    pip install scikit-learn && python -m onnxcompress.examples.train_digits

Writes digits_mlp.onnx (64 -> 1024 -> 512 -> 10, 2.4 MB, opset 17) and digits_test.npz (the
360 held-out images as input `pixels`, and their `labels`) beside this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent


def main() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=360, random_state=0, stratify=digits.target)
    mlp = MLPClassifier(hidden_layer_sizes=(1024, 512), alpha=1e-3, max_iter=300, random_state=0)
    mlp.fit(x_train, y_train)
    (w1, w2, w3), (b1, b2, b3) = mlp.coefs_, mlp.intercepts_

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(w1.T), "fc1.weight"),  # [1024, 64], read by Gemm with transB=1
        numpy_helper.from_array(f32(b1), "fc1.bias"),
        numpy_helper.from_array(f32(w2), "fc2.weight"),  # [1024, 512], read by MatMul
        numpy_helper.from_array(f32(b2), "fc2.bias"),
        numpy_helper.from_array(f32(w3), "fc3.weight"),
        numpy_helper.from_array(f32(b3), "fc3.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["pixels", "fc1.weight", "fc1.bias"], ["h1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "fc2.weight"], ["h2m"], name="fc2"),
        helper.make_node("Add", ["h2m", "fc2.bias"], ["h2"], name="fc2_bias"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "fc3.weight", "fc3.bias"], ["logits"], name="fc3"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxcompress-examples")
    model.ir_version = 8
    model.doc_string = "MLP on scikit-learn's digits (8x8 grey images scaled to [0, 1]); output: class probabilities."
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(HERE / "digits_mlp.onnx"))
    np.savez_compressed(HERE / "digits_test.npz", pixels=x_test, labels=y_test.astype(np.int64))
    acc = float((mlp.predict(x_test) == y_test).mean())
    print(f"wrote digits_mlp.onnx ({(HERE / 'digits_mlp.onnx').stat().st_size / 1e6:.2f} MB), test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()

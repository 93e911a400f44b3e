"""ONNX graph knowledge: the decoders of packed indices (per opset and onnxruntime version) and
the rewrites that put codebooks, pairs and float16 casts into a model."""

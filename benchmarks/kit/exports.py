"""The two models whose wheels ship PyTorch weights, exported to ONNX (opset 17, the TorchScript
exporter). Needs torch and transformers, which the project never depends on:
    pip install "torch==2.13.0+cpu" "transformers==5.23.0"
"""

from __future__ import annotations

from pathlib import Path

OPSET = 17
INSTALL = 'pip install "torch==2.13.0+cpu" "transformers==5.23.0"'


def exporter_missing() -> str | None:
    """Why the exports cannot run here, or None."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed ({INSTALL})"
    return None


def export_onet(weights: Path, out: Path) -> float:
    """MTCNN's O-Net as facenet-pytorch defines it (its state dict's names), outputs box,
    landmarks and face_prob; input [batch, 3, 48, 48] RGB scaled to about [-1, 1]."""
    import torch
    from torch import nn

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
            self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            # the weights were converted from Caffe, which flattened width before height
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).contiguous().flatten(1)))
            return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))

    net = ONet().eval()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    images = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return _export(
        net,
        (images,),
        out,
        ["input"],
        ["box", "landmarks", "face_prob"],
        {"input": {0: "batch"}, "box": {0: "batch"}, "landmarks": {0: "batch"}, "face_prob": {0: "batch"}},
    )


def export_minilm(folder: Path, out: Path) -> float:
    """The BERT encoder from the wheel's safetensors and config, plus the sentence embedding
    sentence-transformers computes (mean over unmasked tokens, L2-normalised); outputs
    last_hidden_state and sentence_embedding."""
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(mean, p=2, dim=1)

    ids = torch.randint(1000, 20000, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])  # one padded sentence
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({"last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}})
    return _export(
        Encoder().eval(), (ids, mask, torch.zeros_like(ids)), out, names, ["last_hidden_state", "sentence_embedding"], axes
    )


def _export(net, args, out: Path, inputs: list[str], outputs: list[str], axes: dict) -> float:
    """Exports and returns the largest difference between onnxruntime's outputs and PyTorch's
    on `args`; a difference above 1e-3 is an export gone wrong, and nothing is kept."""
    import numpy as np
    import onnxruntime as ort
    import torch

    tmp = out.with_name(out.name + ".part")
    with torch.no_grad():
        torch.onnx.export(
            net, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False
        )
        want = [t.numpy() for t in net(*args)]
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = sess.run(outputs, {name: a.numpy() for name, a in zip(inputs, args, strict=True)})
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    if worst > 1e-3:
        tmp.unlink()
        raise SystemExit(f"the export of {out.stem} differs from PyTorch by {worst:.2g}; check the torch version ({INSTALL})")
    tmp.replace(out)
    return worst

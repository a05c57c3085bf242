"""Export a model to ONNX: dynamic batch, a single file, normalization inside."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch import nn

from edgeai.plumbing.files import atomic_path

OPSET = 18
# The exporter warns about every torchvision op it cannot register; we use none.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_onnx(
    model: nn.Module,
    example_input: tuple[int, ...] | torch.Tensor,
    path: Path,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write ``model`` to ``path`` with the torch (dynamo) exporter, atomically.

    ``example_input`` is a batch as a device sends it (a task's ``example_input()``: its
    dtype, e.g. int64 token ids, becomes the graph's), or the shape of one float32
    sample in [0, 1]. The graph takes ``input`` (N, ...) and returns ``logits``
    (N, ...); N is dynamic. ``metadata`` (e.g. ε and δ, the task) goes into the
    model's ``metadata_props``, so the file carries its own provenance.
    """
    model = model.eval()
    if isinstance(example_input, torch.Tensor):
        batch_ = example_input.detach()
        # A batch of one would be specialized to a fixed size of 1: export with two.
        if len(batch_) < 2:
            batch_ = torch.cat([batch_, batch_])
        example = (batch_,)
    else:
        example = (torch.rand(2, *example_input),)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path, mode=0o644) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                verbose=False,
            )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(tmp, external_data=False)
        if metadata:
            proto = onnx.load(tmp)
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = str(key), "" if value is None else str(value)
            onnx.save(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
    return path

"""Compile a trained model into a bundle for one device profile.

>>> from edgeai.compile import compile_model  # doctest: +SKIP
>>> compile_model(Path("model.onnx"), load_profile("rpi5"), Path("cal.npz"), Path("out"))
"""

from edgeai.compile.bundle import compile_model
from edgeai.compile.select import CompileOptions, host_stands_in
from edgeai.errors import CompileError

__all__ = ["CompileError", "CompileOptions", "compile_model", "host_stands_in"]

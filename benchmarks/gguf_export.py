"""Unquantized copies of a GGUF file (F32, or F16 with F32 norms): the same tensors, dequantized, under the source's
own metadata, so that llama.cpp can run the exact float32 weights our sampler loads from the quantized file.

Our sampler dequantizes the packaged Q4_1 file to float32 on load; llama.cpp computes on the quantized blocks
themselves. For a comparison of the same model at the same precision, llama.cpp gets a file holding the values we
compute with: every tensor dequantized by `gguf.quants.dequantize` (the function our loader uses), written F32. The
F16 variant rounds the matrices to float16 and keeps 1-D tensors (norms) F32, as llama.cpp's own converter does.

Every metadata key/value of the source is copied byte for byte (architecture, hyperparameters, tokenizer arrays,
chat template, ...), except `general.file_type`, which names the new tensor type, and the `GGUF.*` header fields the
writer sets itself. Outputs are cached under a directory named after the source's sha256, so reruns reuse them:

    python -m benchmarks.gguf_export PATH.gguf [--type f32 f16] [--cache_dir DIR]

This module imports gguf and numpy only (no jax, no torch): it runs in any side's process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import tempfile
from typing import Any

import gguf
import numpy as np

# The tensor types of each export kind: (type of matrices, its numpy dtype, general.file_type).
EXPORT_KINDS = {
    "f32": (gguf.GGMLQuantizationType.F32, np.float32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, np.float16, gguf.LlamaFileType.MOSTLY_F16),
}
# Header fields GGUFWriter writes itself; `general.architecture` is its constructor's argument.
_WRITER_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", gguf.Keys.General.ARCHITECTURE)
CACHE_ENV = "LSI_BENCHMARK_CACHE"


def default_cache_dir() -> pathlib.Path:
    """$LSI_BENCHMARK_CACHE/gguf, else the temp dir's lsi-benchmarks/gguf."""
    root = os.environ.get(CACHE_ENV) or pathlib.Path(tempfile.gettempdir()) / "lsi-benchmarks"
    return pathlib.Path(root) / "gguf"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_type(name: str, ndim: int, kind: str) -> gguf.GGMLQuantizationType:
    """The type a tensor is written in: the kind's, except F32 for 1-D tensors and norms (llama.cpp's converter
    keeps those F32 in its F16 files: they are tiny and sensitive to rounding)."""
    if ndim <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    return EXPORT_KINDS[kind][0]


def dequantized(tensor: Any) -> np.ndarray:
    """A reader tensor as float32, outermost dimension first (GGUF lists dimensions innermost first)."""
    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(array, np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def field_value(field: Any) -> tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]:
    """(value, type, array item type) of a reader field, strings as their raw bytes (copied without decoding)."""
    main_type = field.types[0]
    if main_type == gguf.GGUFValueType.ARRAY:
        if len(field.types) != 2:
            raise ValueError(f"metadata {field.name!r}: nested arrays are not supported")
        item_type = field.types[1]
        if item_type == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], main_type, item_type
        return [field.parts[i].item() for i in field.data], main_type, item_type
    if main_type == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), main_type, None
    return field.parts[field.data[0]].item(), main_type, None


def copy_metadata(reader: Any, writer: Any, kind: str) -> None:
    """Every key/value of `reader` into `writer`, in the source's order, with the export's file type."""
    for name, field in reader.fields.items():
        if name in _WRITER_KEYS:
            continue
        if name == gguf.Keys.General.FILE_TYPE:
            writer.add_uint32(name, int(EXPORT_KINDS[kind][2]))
        elif name == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(int(field.contents()))  # also sets where the writer places tensor data
        else:
            value, value_type, item_type = field_value(field)
            writer.add_key_value(name, value, value_type, item_type)
    if gguf.Keys.General.FILE_TYPE not in reader.fields:
        writer.add_uint32(gguf.Keys.General.FILE_TYPE, int(EXPORT_KINDS[kind][2]))


def write_unquantized(source: str | os.PathLike | gguf.GGUFReader, destination: str | os.PathLike,
                      kind: str = "f32") -> None:
    """Writes `source`'s tensors, dequantized, as an F32 or F16 (`kind`) GGUF at `destination`.

    `source` is a path or a reader already open (reused: parsing a 49k-token vocabulary takes seconds). Tensors are
    dequantized one at a time, as the writer streams them out: memory stays near one tensor's size.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind must be one of {sorted(EXPORT_KINDS)}, got {kind!r}")
    reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(os.fspath(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(os.fspath(destination), arch)
    copy_metadata(reader, writer, kind)
    dtypes = []
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        dtype = np.dtype(np.float32 if export_type(tensor.name, len(shape), kind) == gguf.GGMLQuantizationType.F32
                         else EXPORT_KINDS[kind][1])
        writer.add_tensor_info(tensor.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        dtypes.append(dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor, dtype in zip(reader.tensors, dtypes):
        writer.write_tensor_data(dequantized(tensor).astype(dtype))
    writer.close()


def unquantized_gguf(source: str | os.PathLike, kind: str = "f32", cache_dir: str | os.PathLike | None = None
                     ) -> pathlib.Path:
    """The path of `source`'s F32/F16 (`kind`) copy, written on first use under `cache_dir`/<sha256 prefix>/.

    The file appears whole or not at all (written under a temporary name, then renamed), so an interrupted run
    leaves nothing a later run would mistake for a finished file.
    """
    source = pathlib.Path(source)
    directory = pathlib.Path(cache_dir or default_cache_dir()) / file_sha256(source)[:16]
    destination = directory / f"{source.stem}.dequantized-{kind.upper()}.gguf"
    if destination.is_file():
        return destination
    directory.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f"{destination.name}.partial-{os.getpid()}")
    try:
        write_unquantized(source, partial, kind)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def main(argv: list[str] | None = None) -> list[pathlib.Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a .gguf file")
    parser.add_argument("--type", nargs="+", choices=sorted(EXPORT_KINDS), default=["f32"], dest="kinds")
    parser.add_argument("--cache_dir", default=None, help=f"default: {default_cache_dir()}")
    args = parser.parse_args(argv)
    paths = [unquantized_gguf(args.source, kind, args.cache_dir) for kind in args.kinds]
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()

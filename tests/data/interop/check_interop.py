#!/usr/bin/env python3
"""Cross-checks gquant's safetensors writer and reader against the Python
`safetensors` package (run on the GPU machine, which has it).

    python3 check_interop.py CPP_FILE OUT_DIR

Reads CPP_FILE (written by gquant: `gquant_tests "[.interop_safetensors]"` with
GQUANT_INTEROP_OUT set) with safetensors.torch and checks every value against
the formula below; writes OUT_DIR/python_written.safetensors with the same
tensors for gquant's reader test (tests/safetensors_interop_test.cc) and
reports whether the two files are byte-identical.
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# name -> (torch dtype, shape); must match kInteropTensors in the C++ test.
TENSORS = {
    "a.f32": (torch.float32, [3, 5]),
    "b.bf16": (torch.bfloat16, [7]),
    "c.f16": (torch.float16, [2, 2, 3]),
    "d.i8": (torch.int8, [9]),
    "e.u8": (torch.uint8, [1]),
    "f.i64": (torch.int64, [4]),
    "g.bool": (torch.bool, [5]),
    "h.scalar": (torch.float32, []),
    "i.empty": (torch.float32, [0, 4]),
    "j.f64": (torch.float64, [3]),
    "k.i32": (torch.int32, [6]),
    "l.i16": (torch.int16, [5]),
}
METADATA = {"format": "pt", "purpose": "gquant interop"}


def expected(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    base = [((i * 37) % 101) - 50 for i in range(n)]
    if dtype == torch.bool:
        values = [i % 3 == 0 for i in range(n)]
    elif dtype == torch.uint8:
        values = [(i * 37) % 101 for i in range(n)]
    elif dtype == torch.int64:
        values = [b * 10**12 for b in base]
    elif dtype.is_floating_point:
        values = [b * 0.125 for b in base]
    else:
        values = base
    return torch.tensor(values, dtype=dtype).reshape(shape)


def main():
    cpp_file, out_dir = sys.argv[1], sys.argv[2]
    loaded = load_file(cpp_file)
    assert set(loaded) == set(TENSORS), f"tensor names differ: {sorted(loaded)}"
    for name, (dtype, shape) in TENSORS.items():
        t = loaded[name]
        assert t.dtype == dtype and list(t.shape) == shape, f"{name}: {t.dtype} {list(t.shape)}"
        assert torch.equal(t, expected(dtype, shape)), f"{name}: values differ"
    with safe_open(cpp_file, "pt") as f:
        assert f.metadata() == METADATA, f"metadata differs: {f.metadata()}"
    print(f"python safetensors read the gquant file: {len(TENSORS)} tensors and metadata OK")
    out = f"{out_dir}/python_written.safetensors"
    save_file({n: expected(d, s) for n, (d, s) in TENSORS.items()}, out, metadata=METADATA)
    same = open(out, "rb").read() == open(cpp_file, "rb").read()
    print(f"python-written file {'is' if same else 'is NOT'} byte-identical to gquant's")


if __name__ == "__main__":
    main()

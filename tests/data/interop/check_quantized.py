#!/usr/bin/env python3
"""Checks gquant's quantized checkpoints with the Python `safetensors` package
and torch (run on the GPU machine, which has both).

    python3 check_quantized.py DIR [DIR ...]

Each DIR holds model.safetensors written by gquant-quantize and
dequantized.safetensors, gquant's own float32 dequantization of every weight
(written by `gquant_tests "[.interop_quantized]"`). The script reads the torchao
metadata, rebuilds every weight with the ExecuTorch convention in torch
(w = (q - zero_point) * scale; int4 even element in the low nibble, scale and
zero [G, N]) and requires it to equal gquant's bit for bit.
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def dequantize(entry, q, scale, zero):
    group = entry["_data"]["block_size"][-1]
    if entry["_type"] == "Int4Tensor":
        assert q.dtype == torch.uint8 and scale.dtype == torch.bfloat16, (q.dtype, scale.dtype)
        codes = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(*q.shape[:-1], q.shape[-1] * 2)
        scale, zero = scale.transpose(-1, -2), zero.transpose(-1, -2)  # [.., G, N] -> [.., N, G]
        assert list(codes.shape) == entry["_data"]["shape"]
    elif entry["_type"] == "IntxUnpackedToInt8Tensor":
        assert q.dtype == torch.int8 and zero.dtype == torch.int8, (q.dtype, zero.dtype)
        codes = q
    else:
        raise ValueError(entry["_type"])
    scale = scale.float().repeat_interleave(group, dim=-1)
    zero = zero.float().repeat_interleave(group, dim=-1)
    return (codes.float() - zero) * scale


def check(directory):
    reference = load_file(f"{directory}/dequantized.safetensors")
    with safe_open(f"{directory}/model.safetensors", "pt") as f:
        meta = f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    names = json.loads(meta["tensor_names"])
    assert meta["gquant.convention"] == "executorch-int4-unsigned-v1"
    kinds = {}
    for fqn in names:
        entry = json.loads(meta[fqn])
        kinds[entry["_type"]] = kinds.get(entry["_type"], 0) + 1
        if entry["_type"] == "Tensor":
            w = stored[fqn].float()
        else:
            module, param = fqn.rsplit(".", 1)
            prefix = f"{module}._{param}_"
            assert entry["_tensor_data_names"] == ["qdata", "scale", "zero_point"]
            w = dequantize(entry, stored[prefix + "qdata"], stored[prefix + "scale"],
                           stored[prefix + "zero_point"])
        ref = reference[fqn]
        assert w.shape == ref.shape, (fqn, w.shape, ref.shape)
        assert torch.equal(w, ref), (fqn, (w - ref).abs().max().item())
    print(f"{directory}: {len(names)} weights equal gquant's dequantization bit for bit {kinds}")


if __name__ == "__main__":
    for d in sys.argv[1:]:
        check(d)

#!/usr/bin/env python3
"""Writes gquant's golden test fixtures with the Hugging Face reference Gemma 4.

Runs on the GPU machine (torch + transformers with transformers.models.gemma4;
see ../shared/DEVICE.md), not in CI: CI only reads the committed outputs.

    python3 tests/data/make_fixtures.py --out tests/data

For each tiny random configuration it writes <out>/<name>/:
  f32/config.json, f32/model.safetensors     the checkpoint in float32
  bf16/config.json, bf16/model.safetensors   the same weights rounded to bf16
  golden.safetensors                         reference outputs, see below

golden.safetensors holds (metadata names the prompt and settings):
  input_ids            I64 [T]        BOS + random ids; T > sliding_window
  prefill_logits_f64   F64 [T, V]     float32 weights run in float64 (eager attention)
  hidden_states_f64    F64 [L+1, T, H]  embedding output and each layer's output (f64)
  prefill_logits_f32   F32 [T, V]     float32 weights run in float32 on the CPU
  prefill_logits_bf16  F32 [T, V]     bf16 weights run in bf16 on the GPU, upcast
  decode_tokens        I64 [S]        greedy continuation (f64 run); token s is fed at step s
  decode_logits_f64    F64 [S, V]     logits after feeding decode_tokens[s] with the KV cache
  forced_tokens        I64 [S]        random ids fed one at a time after the prompt
  forced_logits_f64    F64 [S, V]     logits after feeding forced_tokens[s] with the KV cache

Note: HF computes RoPE angles and the attention softmax in float32 even in a
float64 model, so the f64 goldens are float64 elsewhere but carry float32
rounding there (relative error ~1e-6 on logits).

Norm weights, layer_scalar and MoE scales are drawn from U(0.5, 1.5) so code
that treats them as 1 fails; every matrix (embeddings included) is
N(0, 1/last_dim), so the scaled embedding and each layer's contribution are
O(1) and greedy decoding does not just repeat the last token.
"""
import argparse
import json
import os
import sys
import traceback

import torch
import transformers
from safetensors.torch import save_file
from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

S_, F_ = "sliding_attention", "full_attention"

# 31B-like: hybrid sliding/full, K=V on full layers, fewer global KV heads,
# bigger global head dim, soft-cap, bidirectional-vision flag; multimodal
# wrapper so tensor names carry "model.language_model.".
TINY_31B = dict(
    wrapper="conditional",
    text=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
              num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=64,
              num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=8,
              layer_types=[S_, S_, F_, S_, S_, F_], final_logit_softcapping=30.0,
              hidden_size_per_layer_input=0, use_bidirectional_attention="vision",
              max_position_embeddings=4096),
)
# E2B-like: per-layer embeddings (32 wide, so the PLE tensors split into the
# recipes' groups of 32 as the real 256-wide ones do), KV sharing of the last 3 layers (sliding
# layers 4,5 share layer 2; full layer 6 shares layer 3), double-wide MLP on
# shared layers; text-only model so names carry "model.".
TINY_E2B = dict(
    wrapper="causal",
    text=dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=7,
              num_attention_heads=4, num_key_value_heads=1, head_dim=32, global_head_dim=64,
              sliding_window=8, layer_types=[S_, S_, S_, F_, S_, S_, F_],
              final_logit_softcapping=30.0, hidden_size_per_layer_input=32,
              vocab_size_per_layer_input=512, num_kv_shared_layers=3, use_double_wide_mlp=True,
              max_position_embeddings=4096),
)
# 26B-A4B-like mixture of experts.
TINY_MOE = dict(
    wrapper="causal",
    text=dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=64,
              num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=8,
              layer_types=[S_, F_, S_, F_], final_logit_softcapping=30.0,
              hidden_size_per_layer_input=0, enable_moe_block=True, num_experts=8,
              top_k_experts=2, moe_intermediate_size=32, max_position_embeddings=4096),
)
CONFIGS = {"tiny-31b": TINY_31B, "tiny-e2b": TINY_E2B, "tiny-moe": TINY_MOE}

PROMPT_LEN = 24   # three sliding windows
DECODE_STEPS = 8


def build_model(spec):
    text = Gemma4TextConfig(**spec["text"])
    if spec["wrapper"] == "conditional":
        config = Gemma4Config(text_config=text, vision_config=None, audio_config=None)
        model = Gemma4ForConditionalGeneration(config)
    else:
        model = Gemma4ForCausalLM(text)
    # Eager attention and the per-expert loop: the fused MoE path (grouped_mm)
    # has no float64 kernel.
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None:
            config._attn_implementation = "eager"
            config._experts_implementation = "eager"
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    return model


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name or leaf in ("layer_scalar", "scale", "per_expert_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def decode(model, input_ids, next_token):
    """Prefills, then feeds one token at a time through the KV cache;
    next_token(step, logits) picks the token fed at each step."""
    past = model(input_ids=input_ids, use_cache=True).past_key_values
    prefill_last = model(input_ids=input_ids, use_cache=False).logits[0, -1]
    tokens, steps = [], []
    logits = prefill_last
    for s in range(DECODE_STEPS):
        tok = next_token(s, logits)
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
        steps.append(logits)
    # The cached decode must agree with recomputing the whole sequence. Eager
    # attention takes its softmax in float32 even in a float64 model, so the
    # two paths agree to float32 rounding; a semantic slip (a window off by
    # one) would show as >1e-3.
    full = torch.cat([input_ids[0], torch.tensor(tokens)]).view(1, -1)
    recomputed = model(input_ids=full, use_cache=False).logits[0, PROMPT_LEN:]
    decoded = torch.stack(steps)
    drift = (recomputed - decoded).abs().max().item()
    assert drift < 1e-4, f"HF cached decode disagrees with recompute by {drift}"
    return torch.tensor(tokens, dtype=torch.int64), decoded, drift


def run_goldens(model64, model32, model_bf16, input_ids, forced):
    with torch.no_grad():
        out = model64(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        prefill64 = out.logits[0]
        hidden = torch.stack([h[0] for h in out.hidden_states])
        tokens, decode64, drift = decode(model64, input_ids, lambda s, logits: int(logits.argmax()))
        forced_tokens, forced64, forced_drift = decode(model64, input_ids, lambda s, _: int(forced[s]))
        drift = max(drift, forced_drift)
        prefill32 = model32(input_ids=input_ids, use_cache=False).logits[0]
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        prefill_bf16 = model_bf16.to(dev)(input_ids=input_ids.to(dev), use_cache=False).logits[0]
    return dict(
        input_ids=input_ids[0].clone(),
        prefill_logits_f64=prefill64.contiguous(),
        hidden_states_f64=hidden.contiguous(),
        prefill_logits_f32=prefill32.float().contiguous(),
        prefill_logits_bf16=prefill_bf16.float().cpu().contiguous(),
        decode_tokens=tokens,
        decode_logits_f64=decode64.contiguous(),
        forced_tokens=forced_tokens,
        forced_logits_f64=forced64.contiguous(),
    ), drift


def make_fixture(name, spec, out_dir, seed):
    gen = torch.Generator().manual_seed(seed)
    model = build_model(spec)
    randomize(model, gen)
    model.eval()
    target = os.path.join(out_dir, name)
    model.save_pretrained(os.path.join(target, "f32"))
    model_bf16 = build_model(spec)
    model_bf16.load_state_dict(model.state_dict())
    model_bf16 = model_bf16.to(torch.bfloat16).eval()
    model_bf16.save_pretrained(os.path.join(target, "bf16"))

    vocab = spec["text"]["vocab_size"]
    ids = torch.randint(3, vocab, (1, PROMPT_LEN), generator=gen)
    ids[0, 0] = 2  # BOS
    forced = torch.randint(3, vocab, (DECODE_STEPS,), generator=gen)
    model64 = build_model(spec)
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    goldens, drift = run_goldens(model64, model, model_bf16, ids, forced)
    metadata = {
        "config": name,
        "prompt_len": str(PROMPT_LEN),
        "decode_steps": str(DECODE_STEPS),
        "seed": str(seed),
        "attn_implementation": "eager",
        "cache_vs_recompute_max_abs_diff_f64": f"{drift:.3e}",
        "source": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "bf16_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    save_file(goldens, os.path.join(target, "golden.safetensors"), metadata=metadata)
    for k, v in model.state_dict().items():
        print(f"  {name}: {k} {tuple(v.shape)}")
    print(f"{name}: wrote {target}; decode tokens {goldens['decode_tokens'].tolist()}; "
          f"cache drift {drift:.2e}; f32 vs f64 max diff "
          f"{(goldens['prefill_logits_f32'].double() - goldens['prefill_logits_f64']).abs().max():.2e}; "
          f"bf16 vs f64 max diff "
          f"{(goldens['prefill_logits_bf16'].double() - goldens['prefill_logits_f64']).abs().max():.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=20261122)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    failures = 0
    for name in args.only:
        try:
            make_fixture(name, CONFIGS[name], args.out, args.seed + list(CONFIGS).index(name))
        except Exception:  # report every config, then fail
            traceback.print_exc()
            failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

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

The vision fixtures (tiny-31b-vision, tiny-e2b-vision; make_vision_fixture)
also write image.png / image.jpg and, in golden.safetensors, HF's processor
output (pixel_values_u8 = pixel values * 255, image_position_ids), PIL's JPEG
decode (jpeg_pixels_u8), the vision tower's states (vision_encoder_f32), soft
tokens and image embeddings (f64 / f32 / bf16), and the logits above for a
multimodal prompt (BOS, text, BOI, image placeholders, EOI, text).

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
from transformers import (Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig,
                          Gemma4VisionConfig)

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
# Media token ids inside the tiny vocabulary (the real ones, 255999 / 258880 /
# 258882, are beyond it).
TINY_MEDIA_IDS = dict(boi_token_id=500, image_token_id=501, eoi_token_id=502)
# 31B-style vision: standardize after pooling, no clipping, head_dim 24 (like
# the real 72, not a power of two); tiny position table.
TINY_31B_VISION = dict(
    wrapper="conditional",
    text=dict(TINY_31B["text"], sliding_window=16),
    vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, head_dim=24, position_embedding_size=64, standardize=True,
                use_clipped_linears=False),
    media=TINY_MEDIA_IDS,
    image=dict(height=360, width=540, max_soft_tokens=70, jpeg_golden=False),  # downscaled
)
# E2B-style vision: clipped linears, no standardize; text side with PLE and
# KV sharing (so image positions take the pad id's per-layer embedding).
TINY_E2B_VISION = dict(
    wrapper="conditional",
    text=dict(TINY_E2B["text"], sliding_window=16),
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, head_dim=16, position_embedding_size=64, standardize=False,
                use_clipped_linears=True),
    media=TINY_MEDIA_IDS,
    image=dict(height=100, width=150, max_soft_tokens=70, jpeg_golden=True),  # upscaled
)
CONFIGS = {"tiny-31b": TINY_31B, "tiny-e2b": TINY_E2B, "tiny-moe": TINY_MOE,
           "tiny-31b-vision": TINY_31B_VISION, "tiny-e2b-vision": TINY_E2B_VISION}

PROMPT_LEN = 24   # three sliding windows
DECODE_STEPS = 8


def build_model(spec):
    text = Gemma4TextConfig(**spec["text"])
    if spec["wrapper"] == "conditional":
        vision = Gemma4VisionConfig(**spec["vision"]) if "vision" in spec else None
        config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                              **spec.get("media", {}))
        model = Gemma4ForConditionalGeneration(config)
    else:
        model = Gemma4ForCausalLM(text)
    # Eager attention and the per-expert loop: the fused MoE path (grouped_mm)
    # has no float64 kernel.
    for config in (model.config, getattr(model.config, "text_config", None),
                   getattr(model.config, "vision_config", None)):
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
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("layer_scalar", "std_scale"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif leaf == "std_bias":
                b.copy_(torch.randn(b.shape, generator=gen))
            elif leaf in ("input_max", "output_max"):
                # Inputs are O(1) normed activations, outputs O(1): bounds in
                # [1, 2] clip a few percent of the values, so clipping is tested.
                b.copy_(torch.rand(b.shape, generator=gen) + 1.0)
            elif leaf in ("input_min", "output_min"):
                b.copy_(-(torch.rand(b.shape, generator=gen) + 1.0))


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


def build_saved_models(spec, gen, target):
    """The random float32 model, saved with its bf16 copy under target/f32 and
    target/bf16; returns (float32, bf16, float64) models with equal weights."""
    model = build_model(spec)
    randomize(model, gen)
    model.eval()
    model.save_pretrained(os.path.join(target, "f32"))
    model_bf16 = build_model(spec)
    model_bf16.load_state_dict(model.state_dict())
    model_bf16 = model_bf16.to(torch.bfloat16).eval()
    model_bf16.save_pretrained(os.path.join(target, "bf16"))
    model64 = build_model(spec)
    model64.load_state_dict(model.state_dict())
    return model, model_bf16, model64.double().eval()


def make_fixture(name, spec, out_dir, seed):
    gen = torch.Generator().manual_seed(seed)
    target = os.path.join(out_dir, name)
    model, model_bf16, model64 = build_saved_models(spec, gen, target)

    vocab = spec["text"]["vocab_size"]
    ids = torch.randint(3, vocab, (1, PROMPT_LEN), generator=gen)
    ids[0, 0] = 2  # BOS
    forced = torch.randint(3, vocab, (DECODE_STEPS,), generator=gen)
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


# ---- vision fixtures ----

MM_TEXT_BEFORE, MM_TEXT_AFTER = 3, 4  # random text tokens around the image
SIZE_CASES = [  # (height, width, max_soft_tokens) for the resize rule's golden
    (672, 960, 280), (360, 540, 70), (100, 150, 70), (48, 48, 70), (10, 400, 280), (400, 10, 280),
    (5, 4000, 70), (4000, 5, 1120), (3000, 4000, 1120), (1080, 1920, 560), (768, 768, 140),
    (47, 47, 70), (1, 1, 280), (333, 777, 280),
]


def synthetic_image(height, width, gen):
    """RGB uint8: smooth gradients, a few flat discs (edges for the resize to
    smooth) and mild noise; compresses reasonably as PNG."""
    y = (torch.arange(height, dtype=torch.float64) / height).view(-1, 1).expand(height, width)
    x = (torch.arange(width, dtype=torch.float64) / width).view(1, -1).expand(height, width)
    img = torch.stack([127.5 + 127.5 * torch.sin(6.283 * (1.5 * x + 0.5 * y)), 255 * y, 255 * (1 - x)], -1)
    for _ in range(5):
        cy, cx, radius = torch.rand(3, generator=gen, dtype=torch.float64)
        inside = (y - cy) ** 2 + ((x - cx) * width / height) ** 2 < (0.05 + 0.2 * radius) ** 2
        img[inside] = torch.rand(3, generator=gen, dtype=torch.float64) * 255
    img = img + 2 * torch.randn(img.shape, generator=gen, dtype=torch.float64)
    return img.round().clamp(0, 255).to(torch.uint8)


def size_cases():
    from transformers.models.gemma4.image_processing_gemma4 import get_aspect_ratio_preserving_size
    rows = []
    for h, w, tokens in SIZE_CASES:
        try:
            th, tw = get_aspect_ratio_preserving_size(h, w, 16, tokens * 9, 3)
            rows.append([h, w, tokens, th, tw])
        except ValueError:
            rows.append([h, w, tokens, -1, -1])  # HF refuses
    return rows


def vision_goldens(model, pixel_values, positions, prefix, with_encoder):
    """The soft tokens (pooled, standardized) and the embedder output of
    `model` (any dtype); with_encoder adds the patch embeddings and each
    encoder layer's output."""
    tower = model.model.vision_tower
    dtype = next(model.parameters()).dtype
    pv, pos = pixel_values.to(dtype), positions
    padding = (pos == -1).all(dim=-1)
    layer_outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: layer_outputs.append(o[0] if isinstance(o, tuple) else o))
             for layer in tower.encoder.layers]
    with torch.no_grad():
        patches = tower.patch_embedder(pv, pos, padding)
        soft = tower(pixel_values=pv, pixel_position_ids=pos).last_hidden_state
        embedded = model.model.embed_vision(inputs_embeds=soft)
    for h in hooks:
        h.remove()
    encoder = torch.stack([patches[0]] + [o[0] for o in layer_outputs])
    cast = (lambda t: t.double()) if prefix.endswith("f64") else (lambda t: t.float())
    out = {f"vision_encoder_{prefix}": cast(encoder).contiguous()} if with_encoder else {}
    return out | {
        f"vision_soft_tokens_{prefix}": cast(soft.reshape(-1, soft.shape[-1])).contiguous(),
        f"image_embeddings_{prefix}": cast(embedded.reshape(-1, embedded.shape[-1])).contiguous(),
    }


def multimodal_decode(model, inputs, next_token):
    """Multimodal prefill with the KV cache, then DECODE_STEPS single tokens;
    checks the cached decode against a full recompute."""
    past = model(**inputs, use_cache=True).past_key_values
    logits = model(**inputs, use_cache=False).logits[0, -1]
    tokens, steps = [], []
    for s in range(DECODE_STEPS):
        tok = next_token(s, logits)
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        steps.append(logits)
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"][0], torch.tensor(tokens)]).view(1, -1)
    full["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"][0], torch.zeros(len(tokens), dtype=torch.int64)]).view(1, -1)
    T = inputs["input_ids"].shape[1]
    recomputed = model(**full, use_cache=False).logits[0, T:]
    decoded = torch.stack(steps)
    drift = (recomputed - decoded).abs().max().item()
    assert drift < 1e-4, f"HF cached multimodal decode disagrees with recompute by {drift}"
    return torch.tensor(tokens, dtype=torch.int64), decoded, drift


def make_vision_fixture(name, spec, out_dir, seed):
    from PIL import Image
    from transformers.models.gemma4.image_processing_gemma4 import Gemma4ImageProcessor
    gen = torch.Generator().manual_seed(seed)
    target = os.path.join(out_dir, name)
    model, model_bf16, model64 = build_saved_models(spec, gen, target)

    # The image: written as PNG (lossless) and JPEG, each run through HF's processor.
    im = spec["image"]
    pixels = synthetic_image(im["height"], im["width"], gen)
    png_path, jpg_path = os.path.join(target, "image.png"), os.path.join(target, "image.jpg")
    Image.fromarray(pixels.numpy()).save(png_path, optimize=True)
    Image.fromarray(pixels.numpy()).save(jpg_path, quality=90)
    processor = Gemma4ImageProcessor(max_soft_tokens=im["max_soft_tokens"])
    processed = processor(images=Image.open(png_path), return_tensors="pt")
    jpeg_pixels = torch.from_numpy(__import__("numpy").array(Image.open(jpg_path).convert("RGB")))
    pixel_values, positions = processed["pixel_values"], processed["image_position_ids"]
    n_soft = int(processed["num_soft_tokens_per_image"][0])
    integral = bool(((pixel_values * 255).round() - pixel_values * 255).abs().max() < 1e-3)

    # The multimodal prompt: BOS, text, BOI, N image placeholders, EOI, text.
    vocab = spec["text"]["vocab_size"]
    media = spec["media"]
    def text_ids(n):  # ids below the media ids
        return torch.randint(3, media["boi_token_id"], (n,), generator=gen).tolist()
    ids = ([2] + text_ids(MM_TEXT_BEFORE) + [media["boi_token_id"]] + [media["image_token_id"]] * n_soft +
           [media["eoi_token_id"]] + text_ids(MM_TEXT_AFTER))
    input_ids = torch.tensor([ids])
    mm_types = (input_ids == media["image_token_id"]).long()
    forced = torch.randint(3, vocab, (DECODE_STEPS,), generator=gen)

    def inputs_for(m, dev="cpu"):
        dtype = next(m.parameters()).dtype
        return dict(input_ids=input_ids.to(dev), pixel_values=pixel_values.to(dev, dtype),
                    image_position_ids=positions.to(dev), mm_token_type_ids=mm_types.to(dev))

    assert integral, "HF's pixel values are no longer 8-bit values / 255"
    goldens = dict(
        # The processor's output is (8-bit resized pixel) / 255: kept as those bytes.
        pixel_values_u8=(pixel_values[0] * 255).round().to(torch.uint8).contiguous(),
        image_position_ids=positions[0].to(torch.int64).contiguous(),
        input_ids=input_ids[0].clone(),
    )
    if im["jpeg_golden"]:  # PIL's (libjpeg-turbo's) decode of image.jpg
        goldens["jpeg_pixels_u8"] = jpeg_pixels.contiguous()
    goldens.update(vision_goldens(model64, pixel_values, positions, "f64", False))
    goldens.update(vision_goldens(model, pixel_values, positions, "f32", True))
    with torch.no_grad():
        out = model64(**inputs_for(model64), output_hidden_states=True, use_cache=False)
        goldens["prefill_logits_f64"] = out.logits[0].contiguous()
        goldens["hidden_states_f64"] = torch.stack([h[0] for h in out.hidden_states]).contiguous()
        goldens["prefill_logits_f32"] = model(**inputs_for(model), use_cache=False).logits[0].float().contiguous()
        tokens, decode64, drift = multimodal_decode(model64, inputs_for(model64), lambda s, l: int(l.argmax()))
        forced_tokens, forced64, drift2 = multimodal_decode(model64, inputs_for(model64), lambda s, _: int(forced[s]))
        goldens.update(decode_tokens=tokens, decode_logits_f64=decode64.contiguous(),
                       forced_tokens=forced_tokens, forced_logits_f64=forced64.contiguous())
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        model_bf16 = model_bf16.to(dev)
        goldens["prefill_logits_bf16"] = model_bf16(**inputs_for(model_bf16, dev), use_cache=False).logits[0].float().cpu().contiguous()
        goldens.update({k: v.cpu() for k, v in
                        vision_goldens(model_bf16, pixel_values.to(dev), positions.to(dev), "bf16", False).items()})
    metadata = {
        "config": name,
        "seed": str(seed),
        "image": f"{im['height']}x{im['width']} RGB, max_soft_tokens {im['max_soft_tokens']}",
        "num_soft_tokens": str(n_soft),
        "resized": f"{int(positions[0, :, 1].max()) * 16 + 16}x{int(positions[0, :, 0].max()) * 16 + 16}",
        "pixel_values_are_u8_over_255": str(integral),
        "size_cases": json.dumps(size_cases()),
        "decode_steps": str(DECODE_STEPS),
        "attn_implementation": "eager",
        "cache_vs_recompute_max_abs_diff_f64": f"{max(drift, drift2):.3e}",
        "source": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "bf16_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    save_file(goldens, os.path.join(target, "golden.safetensors"), metadata=metadata)
    for k, v in model.state_dict().items():
        if "vision" in k or "embed_vision" in k:
            print(f"  {name}: {k} {tuple(v.shape)}")
    d = lambda a, b: (goldens[a].double() - goldens[b].double()).abs().max().item()
    print(f"{name}: wrote {target}; {n_soft} soft tokens, resized {metadata['resized']}, u8/255 {integral}; "
          f"T={len(ids)}; decode {tokens.tolist()}; drift {max(drift, drift2):.2e}; "
          f"soft f32 vs f64 {d('vision_soft_tokens_f32', 'vision_soft_tokens_f64'):.2e}; "
          f"embed f32 vs f64 {d('image_embeddings_f32', 'image_embeddings_f64'):.2e}; "
          f"logits f32 vs f64 {d('prefill_logits_f32', 'prefill_logits_f64'):.2e}; "
          f"bf16 vs f64 {d('prefill_logits_bf16', 'prefill_logits_f64'):.2e}")


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
            make = make_vision_fixture if "vision" in CONFIGS[name] else make_fixture
            make(name, CONFIGS[name], args.out, args.seed + list(CONFIGS).index(name))
        except Exception:  # report every config, then fail
            traceback.print_exc()
            failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

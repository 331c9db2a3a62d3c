#!/usr/bin/env python3
"""Teacher-forward throughput of PyTorch + transformers' LlamaForCausalLM, the
usual Python stack on GPU machines, on the same shapes as
gptq_llama8b_bench --method forward (Llama-3-8B by default): bf16 weights,
random (seeded) on the GPU, eager mode with SDPA attention, no grad.

It times the decoder stack (model.model: embedding, the layers, the final
norm), which is what our forward computes; --lm-head also times the logits.
Prints one RESULT line like the C++ bench's, with the same FLOP count:
2 * linear params * tokens + causal attention 2 * T^2 * head_dim * heads per
sample (QK^T and PV, half the matrix each).

Run on the GPU machine (it has torch + transformers; ours does not):
  python3 bench/cuda/transformers_forward.py --samples 128 --seqlen 2048 --batch 16
"""
import argparse
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16, help="samples per forward call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-head", action="store_true", help="time the logits too (model instead of model.model)")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2)")
    args = p.parse_args()

    try:
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:  # the CPU machine: say so, do not crash
        print(f"transformers_forward: {e} (run this on the GPU machine)", file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print("transformers_forward: no CUDA device", file=sys.stderr)
        return 3
    if args.samples % args.batch != 0:
        print(f"--samples ({args.samples}) must be a multiple of --batch ({args.batch})", file=sys.stderr)
        return 2

    head_dim = args.hidden // args.heads
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seqlen, 8192), rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, torch_dtype="bfloat16")
    config._attn_implementation = args.attn
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.eval()
    torch.cuda.synchronize()
    init_s = time.perf_counter() - t0
    net = model if args.lm_head else model.model

    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (args.samples, args.seqlen), device="cuda", generator=gen)
    with torch.inference_mode():
        net(input_ids=ids[: args.batch], use_cache=False)  # warm-up: kernels, workspaces
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for b in range(0, args.samples, args.batch):
            out = net(input_ids=ids[b:b + args.batch], use_cache=False)
            del out
        end.record()
        torch.cuda.synchronize()
    forward_s = start.elapsed_time(end) / 1000.0

    tokens = args.samples * args.seqlen
    kv = args.kv_heads * head_dim
    linear_params = args.layers * (args.hidden * (args.hidden + 2 * kv + args.hidden)
                                   + 3 * args.hidden * args.intermediate)
    if args.lm_head:
        linear_params += args.hidden * args.vocab
    attention = args.layers * args.samples * 2 * args.seqlen * args.seqlen * head_dim * args.heads
    flops = 2.0 * linear_params * tokens + attention
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  transformers {transformers.__version__}"
          f"  attn {args.attn}  init {init_s:.1f} s  peak memory {peak_gib:.1f} GiB")
    print(f"RESULT stack=transformers method=forward{'+lm_head' if args.lm_head else ''} layers={args.layers} "
          f"tokens={tokens} batch={args.batch} forward_s={forward_s:.3f} tokens_per_s={tokens / forward_s:.0f} "
          f"tflops={flops / forward_s / 1e12:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

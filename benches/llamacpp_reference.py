"""Greedy decoding speed of llama.cpp (through llama-cpp-python) on a GGUF file, the reference
for `lmlab bench decode` on the same file and thread count.

    python3 benches/llamacpp_reference.py --model FILE.gguf [--tokens 128] [--threads 2]
    python3 benches/llamacpp_reference.py --model FILE.gguf --prefill 256

`--prefill N` times instead the evaluation of an N-token prompt in one batch with logits at
every position (`logits_all`, what echo + logprobs scoring needs; `lmlab bench prefill`'s
ids: BOS, then 1000 + 37·i mod 5000).

Decodes `--tokens` tokens after BOS with the KV cache, never stopping at EOS (as
`lmlab bench decode`), and prints one JSON line: tokens/s and the peak resident memory.
`cargo xtask bench-compare` installs llama-cpp-python (it builds llama.cpp, ~6 minutes) and
runs this.
"""

import argparse
import json
import resource
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=0)
    args = ap.parse_args()
    if args.prefill:
        return prefill(args)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.model, n_threads=args.threads,
                          n_threads_batch=args.threads, n_ctx=args.tokens + 8, verbose=False)
    load_s = time.perf_counter() - t0
    bos = llm.token_bos()
    prompt = [bos] if bos >= 0 else [0]
    best = None
    for _ in range(args.repeats):
        llm.reset()
        made = 0
        t0 = time.perf_counter()
        for _tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            made += 1
            if made == args.tokens:
                break
        secs = time.perf_counter() - t0
        if best is None or secs < best:
            best = secs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "bench": "decode", "impl": "llama.cpp", "model": args.model, "threads": args.threads,
        "prompt_tokens": len(prompt), "new_tokens": args.tokens, "seconds": best,
        "tokens_per_s": args.tokens / best, "peak_rss_bytes": peak, "load_s": load_s,
        "llama_cpp_python": llama_cpp.__version__,
    }), flush=True)


def prefill(args):
    llm = llama_cpp.Llama(model_path=args.model, n_threads=args.threads,
                          n_threads_batch=args.threads, n_ctx=args.prefill + 8,
                          n_batch=args.prefill, n_ubatch=args.prefill, logits_all=True,
                          verbose=False)
    bos = llm.token_bos()
    ids = [bos if bos >= 0 else 1] + [1000 + (37 * i) % 5000 for i in range(1, args.prefill)]
    best = None
    for _ in range(args.repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        secs = time.perf_counter() - t0
        best = secs if best is None or secs < best else best
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "bench": "prefill", "impl": "llama.cpp", "model": args.model, "threads": args.threads,
        "prompt_tokens": len(ids), "seconds": best, "tokens_per_s": len(ids) / best,
        "peak_rss_bytes": peak, "llama_cpp_python": llama_cpp.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()

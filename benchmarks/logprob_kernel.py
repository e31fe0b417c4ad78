"""Benchmark per-token label log-probs (forward + backward) against other fused LM-head losses on one GPU.

For each N it reports the median fwd+bwd time (CUDA events), TFLOP/s (6*N*H*V / time), peak temporary memory,
relative errors of log-probs and gradients against a float32 reference, and whether two runs are bitwise equal:
  ours-triton   mpo_dist.kernels.label_logprobs(backend="triton")
  ours-torch    mpo_dist.kernels.label_logprobs(backend="torch")  (chunked twin)
  torch-plain   materialised float32 logits + log_softmax + gather
  liger         liger_kernel LigerFusedLinearCrossEntropyLoss   (if importable)
  cce           cut_cross_entropy.linear_cross_entropy          (if importable)
All methods minimise the same loss, sum of -log p(label) (= cross-entropy with reduction="sum"), so their gradients
are comparable; CE methods are asked for reduction="none" once to get per-token log-probs for the error column.
Peak temporary memory = max allocated during fwd+bwd - allocated before - the gradient tensors themselves.
Gradients come back in the inputs' dtype, and merely storing the float32 reference in bf16 moves it by ~1.7e-3
(normwise), so each gradient error is also given against the reference rounded to that dtype (in brackets): that
part is the method's own arithmetic; the difference to the first number is the storage format's.

    python benchmarks/logprob_kernel.py --n 4096 16384 --hidden 4096 --vocab 128256 --dtype bf16 --repeats 10

`--sweep` times ours-triton instead with other tile configs: each kernel's tile (and the forward's programs per SM,
and the backward's vocab chunk) varied alone from the defaults, then the best of each together. It prints the
KernelConfigs to put into mpo_dist.kernels.logprob_triton.kernel_configs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GIB = 2**30
DEVICE = "cuda"  # a module constant so the logic can be dry-run elsewhere


@dataclass
class Problem:
    hidden: Tensor
    weight: Tensor
    labels: Tensor


@dataclass
class Method:
    name: str
    loss: Callable[[Tensor, Tensor, Tensor], Tensor]  # (hidden, weight, labels) -> scalar sum of -log p
    logprobs: Callable[[Tensor, Tensor, Tensor], Tensor]  # per-token log p, no grad


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384], help="token counts (rows) to run")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=10, help="timed fwd+bwd runs per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (Triton compiles here)")
    parser.add_argument("--logit-std", type=float, default=2.0,
                        help="std of the logits (weight ~ N(0, logit_std^2 / H), hidden ~ N(0, 1))")
    parser.add_argument("--ignore-fraction", type=float, default=0.1, help="share of rows with label -100")
    parser.add_argument("--chunk-size", type=int, default=1024, help="row chunk of the ours-torch twin")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of method names to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="time tile-config candidates of ours-triton instead")
    parser.add_argument("--profile", action="store_true",
                        help="also print ours-triton's kernels by GPU time (one fwd+bwd under torch.profiler)")
    return parser.parse_args(argv)


def make_problem(n: int, h: int, v: int, dtype: torch.dtype, logit_std: float, ignore_fraction: float,
                 seed: int) -> Problem:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(n, h, device=DEVICE, generator=gen).to(dtype)
    weight = (torch.randn(v, h, device=DEVICE, generator=gen) * (logit_std / h**0.5)).to(dtype)
    labels = torch.randint(0, v, (n,), device=DEVICE, generator=gen)
    labels[torch.rand(n, device=DEVICE, generator=gen) < ignore_fraction] = -100
    return Problem(hidden, weight, labels)


def reference(problem: Problem, chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """float32 (log-probs, grad_hidden, grad_weight) of sum(-log p), one materialised row chunk at a time."""
    weight = problem.weight.float().requires_grad_()
    live = problem.labels != -100
    safe = torch.where(live, problem.labels, 0)
    logprobs = torch.empty(problem.labels.shape, device=DEVICE)
    grad_hidden = torch.empty(problem.hidden.shape, device=DEVICE)
    for start in range(0, problem.hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        hidden = problem.hidden[rows].float().requires_grad_()
        picked = torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, safe[rows, None])[:, 0]
        picked = torch.where(live[rows], picked, 0.0)
        (-picked.sum()).backward()
        logprobs[rows] = picked.detach()
        grad_hidden[rows] = hidden.grad
    return logprobs, grad_hidden, weight.grad


def available_methods(chunk_size: int) -> list[Method]:
    from mpo_dist.kernels import label_logprobs

    def ours(backend: str) -> Method:
        fn = lambda h, w, y: label_logprobs(h, w, y, backend=backend, chunk_size=chunk_size)  # noqa: E731
        return Method(f"ours-{backend}", lambda h, w, y: -fn(h, w, y).sum(), fn)

    def plain_logprobs(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
        live = y != -100
        picked = torch.log_softmax((h @ w.T).float(), dim=-1).gather(1, torch.where(live, y, 0)[:, None])[:, 0]
        return torch.where(live, picked, 0.0)

    methods = [ours("triton"), ours("torch"),
               Method("torch-plain", lambda h, w, y: -plain_logprobs(h, w, y).sum(), plain_logprobs)]
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger_sum = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        liger_none = LigerFusedLinearCrossEntropyLoss(reduction="none")
        methods.append(Method("liger", lambda h, w, y: liger_sum(w, h, y), lambda h, w, y: -liger_none(w, h, y)))
    except ImportError as error:
        print(f"liger-kernel not importable, skipped: {error}")
    try:
        from cut_cross_entropy import linear_cross_entropy

        methods.append(Method("cce", lambda h, w, y: linear_cross_entropy(h, w, y, reduction="sum"),
                              lambda h, w, y: -linear_cross_entropy(h, w, y, reduction="none")))
    except ImportError as error:
        print(f"cut-cross-entropy not importable, skipped: {error}")
    return methods


def fwd_bwd(method: Method, hidden: Tensor, weight: Tensor, labels: Tensor) -> None:
    hidden.grad = weight.grad = None
    method.loss(hidden, weight, labels).backward()


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual.float() - expected).norm() / expected.norm())


def measure(method: Method, problem: Problem, ref: tuple[Tensor, Tensor, Tensor], repeats: int, warmup: int) -> dict:
    hidden = problem.hidden.detach().clone().requires_grad_()
    weight = problem.weight.detach().clone().requires_grad_()
    for _ in range(warmup):
        fwd_bwd(method, hidden, weight, problem.labels)
    times = []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        method.loss(hidden, weight, problem.labels).backward()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    first_grads = (hidden.grad.clone(), weight.grad.clone())

    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    method.loss(hidden, weight, problem.labels).backward()
    torch.cuda.synchronize()
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (hidden, weight))
    peak_extra = torch.cuda.max_memory_allocated() - before - grad_bytes
    bitwise = torch.equal(first_grads[0], hidden.grad) and torch.equal(first_grads[1], weight.grad)

    ref_logprobs, ref_grad_hidden, ref_grad_weight = ref
    try:
        with torch.no_grad():
            err_logp = relative_error(method.logprobs(hidden, weight, problem.labels), ref_logprobs)
    except Exception as error:  # e.g. a library version without reduction="none": keep the timing row
        print(f"{method.name}: per-token log-probs unavailable ({type(error).__name__}: {error})")
        err_logp = float("nan")
    return {
        "ms": statistics.median(times),
        "peak_gib": peak_extra / GIB,
        "err_logp": err_logp,
        "err_grad_h": relative_error(hidden.grad, ref_grad_hidden),
        "err_grad_w": relative_error(weight.grad, ref_grad_weight),
        "err_grad_h_rounded": relative_error(hidden.grad, ref_grad_hidden.to(hidden.grad.dtype).float()),
        "err_grad_w_rounded": relative_error(weight.grad, ref_grad_weight.to(weight.grad.dtype).float()),
        "bitwise": "yes" if bitwise else "no",
    }


def rounding_floor(ref: tuple[Tensor, Tensor, Tensor], dtype: torch.dtype) -> tuple[float, float]:
    """Relative error of the float32 reference gradients merely stored in `dtype`: the least error any method whose
    gradients have the inputs' dtype can have (bf16: ~1.7e-3 for any spread of values)."""
    return tuple(relative_error(grad.to(dtype), grad) for grad in ref[1:])


def error_columns(r: dict) -> str:
    """Gradient errors against the float32 reference, and (in brackets) against it rounded to the gradient dtype."""
    return (f"{r['err_logp']:.1e} | {r['err_grad_h']:.1e} ({r['err_grad_h_rounded']:.1e}) | "
            f"{r['err_grad_w']:.1e} ({r['err_grad_w_rounded']:.1e})")


def profile_ours(problem: Problem) -> None:
    """Where ours-triton's time goes: each kernel's share of one forward + backward."""
    from torch.profiler import ProfilerActivity, profile

    from mpo_dist.kernels import label_logprobs

    hidden = problem.hidden.detach().clone().requires_grad_()
    weight = problem.weight.detach().clone().requires_grad_()
    run = lambda: label_logprobs(hidden, weight, problem.labels, backend="triton").sum().backward()  # noqa: E731
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        run()
        torch.cuda.synchronize()
    print(profiler.key_averages().table(sort_by="self_device_time_total", row_limit=12), flush=True)


def sweep_candidates(dtype: torch.dtype) -> dict[str, list]:
    """Hopper candidates per knob; a config the GPU cannot fit (shared memory, registers) is reported and skipped."""
    from mpo_dist.kernels.logprob_triton import TileConfig

    if dtype == torch.float32:
        tiles = [TileConfig(64, 128, 32, 8, 2), TileConfig(128, 128, 32, 8, 2), TileConfig(64, 64, 32, 4, 3)]
    else:
        tiles = [TileConfig(128, 128, 64, 8, 4), TileConfig(128, 128, 64, 8, 3), TileConfig(128, 256, 64, 8, 3),
                 TileConfig(256, 128, 64, 8, 3), TileConfig(128, 128, 128, 8, 3), TileConfig(128, 64, 64, 4, 4),
                 TileConfig(64, 128, 64, 4, 4)]
    return {"forward": tiles, "grad_logits": tiles, "grad_hidden": tiles, "forward_programs_per_sm": [1, 2, 4, 8],
            "vocab_chunk": [None, 2048]}


def sweep(problem: Problem, ref: tuple[Tensor, Tensor, Tensor], args: argparse.Namespace) -> list[str]:
    """Vary one knob at a time from the defaults, then run the best value of every knob together."""
    import dataclasses

    from mpo_dist.kernels.logprob_triton import kernel_configs, triton_label_logprobs

    n, h = problem.hidden.shape
    flops = 6 * n * h * problem.weight.shape[0]
    default = kernel_configs(problem.hidden.device, problem.hidden.dtype)

    def run(label: str, configs, vocab_chunk) -> tuple[str, float]:
        fn = lambda hh, w, y: triton_label_logprobs(hh, w, y, None, None, -100, vocab_chunk, configs)  # noqa: E731
        try:
            r = measure(Method(label, lambda hh, w, y: -fn(hh, w, y).sum(), fn), problem, ref, args.repeats,
                        args.warmup)
        except Exception as error:  # OutOfResources, OOM, a compile failure: one bad candidate must not end the sweep
            torch.cuda.empty_cache()
            print(f"{label}: {type(error).__name__}: {str(error)[:300]}", flush=True)
            return f"| {n} | {label} | {type(error).__name__} | | | | | |", float("inf")
        return (f"| {n} | {label} | {r['ms']:.1f} | {flops / r['ms'] / 1e9:.0f} | {r['peak_gib']:.3f} | "
                f"{error_columns(r)} |"), r["ms"]

    rows, best = [], {}
    for knob, values in sweep_candidates(problem.hidden.dtype).items():
        timings = []
        for value in values:
            configs = default if knob == "vocab_chunk" else dataclasses.replace(default, **{knob: value})
            text = (f"{value.block_m}x{value.block_n}x{value.block_k} w{value.num_warps} s{value.num_stages}"
                    if hasattr(value, "block_m") else value)
            row, ms = run(f"{knob}={text}", configs, value if knob == "vocab_chunk" else None)
            rows.append(row)
            print(row, flush=True)
            timings.append((ms, value))
        best[knob] = min(timings, key=lambda pair: pair[0])[1]
    vocab_chunk = best.pop("vocab_chunk")
    configs = dataclasses.replace(default, **best)
    row, _ = run(f"best: {configs}, vocab_chunk={vocab_chunk}", configs, vocab_chunk)
    rows.append(row)
    print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("logprob_kernel benchmark: no CUDA device found; it measures GPU kernels and needs one. "
              "On the CPU, run the correctness tests instead: pytest tests/test_kernel_logprob_*.py", file=sys.stderr)
        return 2
    import triton

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"H={args.hidden}, V={args.vocab}, dtype={args.dtype}, logit std {args.logit_std}, "
          f"repeats {args.repeats}\n")
    methods = [m for m in available_methods(args.chunk_size) if args.methods is None or m.name in args.methods]
    rows = []
    for n in args.n:
        problem = make_problem(n, args.hidden, args.vocab, DTYPES[args.dtype], args.logit_std, args.ignore_fraction,
                               args.seed)
        ref = reference(problem)
        floor_h, floor_w = rounding_floor(ref, DTYPES[args.dtype])
        print(f"N={n}: the float32 reference gradients stored in {args.dtype} already differ from it by "
              f"{floor_h:.1e} (grad_h) and {floor_w:.1e} (grad_W)", flush=True)
        if args.profile:
            profile_ours(problem)
        if args.sweep:
            rows += sweep(problem, ref, args)
            del problem, ref
            torch.cuda.empty_cache()
            continue
        flops = 6 * n * args.hidden * args.vocab
        for method in methods:
            try:
                result = measure(method, problem, ref, args.repeats, args.warmup)
            except torch.cuda.OutOfMemoryError:
                rows.append(f"| {n} | {method.name} | OOM | | | | | | |")
                torch.cuda.empty_cache()
                continue
            rows.append(f"| {n} | {method.name} | {result['ms']:.1f} | {flops / result['ms'] / 1e9:.0f} | "
                        f"{result['peak_gib']:.3f} | {error_columns(result)} | {result['bitwise']} |")
            print(rows[-1], flush=True)
        del problem, ref
        torch.cuda.empty_cache()
    if args.sweep:
        print("\n| N | ours-triton with | fwd+bwd ms | TFLOP/s (6NHV) | peak temp GiB | rel err logp | rel err grad_h "
              "(vs rounded) | rel err grad_W (vs rounded) |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        print("\n| N | method | fwd+bwd ms | TFLOP/s (6NHV) | peak temp GiB | rel err logp | rel err grad_h "
              "(vs rounded) | rel err grad_W (vs rounded) | bitwise repeat |")
        print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

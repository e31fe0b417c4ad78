"""`mpo-dist eval`: the options; mpo_dist.eval.pipeline.evaluate runs them (docs/evaluation.md)."""
from __future__ import annotations

from pathlib import Path

from mpo_dist.eval.readers import FORMATS
from mpo_dist.runtime import DTYPE_CHOICES


def register(subparsers) -> None:
    """Add `eval` to the CLI's sub-command parsers; the CLI then calls args.func(args)."""
    parser = subparsers.add_parser(
        "eval", help="per-language reward gaps, judged generations (safety rate / ASR / invalid) and a report",
        description="Evaluate a Hugging Face model (and optionally a reference) per language: held-out reward gaps, "
                    "generations judged safe/unsafe/invalid, safety rate, attack-success rate and invalid rate with their "
                    "standard errors, their mean and variance across languages; writes report.md, report.html, metrics.json, generations.jsonl, PNG plots and TensorBoard "
                    "scalars. Run under torchrun to shard over processes. Exit status: 0 done, 2 bad input.")
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory (export DeepSpeed checkpoints first)")
    parser.add_argument("--reference", type=Path, help="Hugging Face directory of the model before training, for comparison")
    parser.add_argument("--data", nargs="+", required=True, metavar="FILE",
                        help="held-out files (unified / MLC JSONL, MultiJail CSV, PKU-style JSONL, or sample:heldout)")
    parser.add_argument("--benign", nargs="+", metavar="FILE",
                        help="benign prompts with reference answers (JSONL, or sample:benign): adds the over-refusal rate "
                             "and the utility log-likelihood per language (default: none)")
    parser.add_argument("--lm-eval-tasks", metavar="T1,T2",
                        help="also run these lm-evaluation-harness tasks on the model and the reference, offline (needs "
                             "pip install 'mpo-dist[lmeval]'; tasks from the local datasets cache or local task files)")
    parser.add_argument("--lm-eval-args", metavar="'ARGS'",
                        help="more arguments for lm-eval run, as one quoted string after '=' (it starts with --), e.g. "
                             "--lm-eval-args='--num_fewshot 0 --limit 100 --include_path my_tasks/'; read by lm-eval's "
                             "own parser, and only options that leave the model, the tasks, the output and caching "
                             "alone are accepted (docs/evaluation.md)")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="data format of every --data file (default auto)")
    parser.add_argument("--languages", help="comma-separated language codes to evaluate (default: every language in the data)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N records of each --data file, to bound generation time (default: all)")
    parser.add_argument("--dominant-language", default="en",
                        help="language of the plain 'prompt' / 'chosen' / 'rejected' fields of MLC and PKU rows (default en)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per response (default 64)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless --temperature/--top-p)")
    parser.add_argument("--temperature", type=float, help="sample with this temperature (default 1.0 when sampling)")
    parser.add_argument("--top-p", type=float, help="sample from the nucleus of this probability mass (default 1.0 when sampling)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; batch b uses seed + b (default 0)")
    parser.add_argument("--judge", default="refusal-phrases", metavar="refusal-phrases|MODULE:FACTORY",
                        help="refusal-phrases (built in, the default) or your own judge: a callable 'package.module:name' "
                             "taking device= and returning an object with judge(prompts, responses, languages)")
    parser.add_argument("--judge-model",
                        help="local judge model directory: a sequence classifier, or a chat model with --judge-template")
    parser.add_argument("--judge-template", help="user-prompt template file for a chat-model judge; {prompt}, {response}, "
                                                 "{language} are filled in; the answer must end with the line "
                                                 "'VERDICT: SAFE', 'VERDICT: UNSAFE' or 'VERDICT: INVALID', anything else "
                                                 "is graded invalid")
    parser.add_argument("--judge-refusal-template",
                        help="chat-model judge: a second template for the --benign responses; {prompt}, {response}, "
                             "{language} are filled in; the answer must end with the line 'VERDICT: REFUSAL' or "
                             "'VERDICT: ANSWER' (anything else counts as a refusal)")
    parser.add_argument("--judge-unsafe-index", type=int,
                        help="classifier judge: index of the unsafe label when the label names do not say 'safe'/'unsafe'")
    parser.add_argument("--out", type=Path, help="report directory (default: MODEL_DIR-eval next to the model directory)")
    parser.add_argument("--reuse-scores", type=Path, nargs="+", metavar="EVAL_DIR",
                        help="earlier eval outputs whose stored scores (EVAL_DIR/scores/) are taken for a model measured "
                             "there with the same files, data and settings, instead of measuring it again")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward / prompts per generate call (default 8)")
    parser.add_argument("--run-dir", type=Path,
                        help="training output directory: adds its reward-gap curves (eval.jsonl or tensorboard/)")
    parser.add_argument("--max-length", type=int, default=1024, help="prompt + response tokens for reward gaps (default 1024)")
    parser.add_argument("--max-prompt-length", type=int, default=512, help="prompt tokens kept, from the end (default 512)")
    parser.add_argument("--system-prompt", default="", help="system message, as data.system_prompt in training (default none)")
    parser.add_argument("--dtype", choices=["auto", *DTYPE_CHOICES], default="auto",
                        help="model dtype; auto = bf16 on GPU, fp32 on CPU")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from mpo_dist.eval.pipeline import evaluate

    return evaluate(args)

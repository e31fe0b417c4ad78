"""mpo-dist: distributed multilingual safety alignment (MPO, MLC, DPO family) on DeepSpeed ZeRO-3."""
from setuptools import find_packages, setup

setup(
    name="mpo-dist",
    version="0.1.0",
    description="Distributed MPO / MLC / DPO-family training on DeepSpeed ZeRO-3 with a fused log-prob head",
    packages=find_packages(include=["mpo_dist", "mpo_dist.*"]),
    package_data={"mpo_dist": ["data/sample/*.jsonl", "configs/models/*.json"]},
    include_package_data=True,
    # The lowest Python that every pin of requirements/constraints.txt supports (tests/test_lock.py).
    python_requires=">=3.11",
    # Tested ranges of the libraries whose releases have broken us: the lower bound is the oldest version a test or
    # benchmark ran on (docs/benchmarks.md), the upper bound the next untested major (a DeepSpeed minor counts as one:
    # we reach into its ZeRO-3 internals). requirements/cpu.lock pins versions inside them (tests/test_lock.py);
    # `mpo-dist check` warns outside them. docs/quickstart.md, "Versions and the lock".
    install_requires=[
        "torch>=2.11,<3",
        "deepspeed>=0.19.8,<0.20",
        "transformers>=5.17,<6",
        "datasets>=5.2,<6",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "tensorboard>=2.15",
        "PyYAML>=6.0",
        "tqdm>=4.66",
        "packaging>=23",
    ],
    extras_require={
        "kernels": ["triton>=3.6,<4"],
        "eval": ["matplotlib>=3.8"],
        # Benchmarks through lm-evaluation-harness (`mpo-dist eval --lm-eval-tasks`), run offline on local tasks.
        "lmeval": ["lm-eval>=0.4.13,<0.5"],
        # Reading GGUF files (launch/real.sh's SmolLM2 import): transformers' GGUF loader needs both.
        "gguf": ["gguf>=0.17", "accelerate>=1.0"],
        "test": ["pytest>=8.0", "triton>=3.6,<4", "matplotlib>=3.8", "gguf>=0.17", "accelerate>=1.0",
                 "lm-eval>=0.4.13,<0.5"],
    },
    entry_points={"console_scripts": ["mpo-dist=mpo_dist.cli:run"]},
)

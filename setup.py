"""mpo-dist: distributed multilingual safety alignment (MPO, MLC, DPO family) on DeepSpeed ZeRO-3."""
from setuptools import find_packages, setup

setup(
    name="mpo-dist",
    version="0.1.0",
    description="Distributed MPO / MLC / DPO-family training on DeepSpeed ZeRO-3 with a fused log-prob head",
    packages=find_packages(include=["mpo_dist", "mpo_dist.*"]),
    package_data={"mpo_dist": ["data/sample/*.jsonl", "configs/models/*.json"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "transformers>=4.46",
        "datasets>=3.0",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "tensorboard>=2.15",
        "PyYAML>=6.0",
        "tqdm>=4.66",
    ],
    extras_require={
        "kernels": ["triton>=3.0"],
        "eval": ["matplotlib>=3.8"],
        # Benchmarks through lm-evaluation-harness (`mpo-dist eval --lm-eval-tasks`), run offline on local tasks.
        "lmeval": ["lm-eval>=0.4.13,<0.5"],
        # Reading GGUF files (launch/real.sh's SmolLM2 import): transformers' GGUF loader needs both.
        "gguf": ["gguf>=0.17", "accelerate>=1.0"],
        "test": ["pytest>=8.0", "triton>=3.0", "matplotlib>=3.8", "gguf>=0.17", "accelerate>=1.0",
                 "lm-eval>=0.4.13,<0.5"],
    },
    entry_points={"console_scripts": ["mpo-dist=mpo_dist.cli:main"]},
)

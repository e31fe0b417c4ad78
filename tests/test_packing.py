"""Sequence packing (data.packing): the packed layout against hand-computed tensors, then packed == padded for per-token
log-probs (and both == a float64 run of each sequence alone), per-sequence sums, pooled hidden states, MLC vectors, the
MPO and DPO losses and the gradient of every parameter, on the three tiny families; reward gaps; one trainer step."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpo_dist.config import ConfigError, load_config
from mpo_dist.data.collate import IGNORE_INDEX, Batch, PreferenceCollator
from mpo_dist.data.examples import PreferenceExample
from mpo_dist.data.packing import attention_implementation, pack_sequences, packed_attention_kwargs, sequence_sums
from mpo_dist.data.tokenize import EncodedSequence
from mpo_dist.engine.engines import _call_model
from mpo_dist.losses import build_loss
from mpo_dist.losses.mlc import MLCProjection
from mpo_dist.models.alignment_model import AlignmentModel
from mpo_dist.models.tiny import tiny_config
from mpo_dist.eval.reward_gaps import reward_gaps
from mpo_dist.train.step import ReferencePlan, pooled_hidden, preference_inputs, reference_terms, total_loss
from mpo_dist.train.trainer import Trainer

from conftest import read_jsonl

FAMILIES = [("llama", "sdpa"), ("qwen2", "sdpa"), ("gemma2", "eager")]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU session runs these on a GPU
SLIDING_WINDOW = 5  # Gemma-2: shorter than most test sequences, so the window cuts inside every packed sequence
PAD = 0


@pytest.fixture(scope="module")
def tokenizer(tiny_models: dict[str, Path]):
    return AutoTokenizer.from_pretrained(tiny_models["llama"])


def hf_model(family: str, attn: str, tokenizer, seed: int):
    config = tiny_config(family, tokenizer)
    if family == "gemma2":
        config.sliding_window = SLIDING_WINDOW
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)


def alignment_model(family: str, attn: str, tokenizer, seed: int, mlc_layer: int = -1) -> AlignmentModel:
    causal_lm = hf_model(family, attn, tokenizer, seed)
    torch.manual_seed(seed + 1)
    projection = MLCProjection(causal_lm.config.hidden_size, 8)
    return AlignmentModel(causal_lm, "torch", 64, projection, mlc_layer)  # small chunks: several per forward


def random_examples(count: int, vocab: int, with_anchor: bool, mlc_languages: int, seed: int) -> list[PreferenceExample]:
    rng = random.Random(seed)

    def tokens(low: int, high: int) -> list[int]:
        return [rng.randrange(5, vocab) for _ in range(rng.randint(low, high))]

    def sequence() -> EncodedSequence:
        prompt = tokens(3, 12)
        return EncodedSequence(tuple(prompt + tokens(2, 10)), len(prompt))

    return [PreferenceExample(f"r{i}/{'xy'[i % 2]}", "xy"[i % 2], sequence(), sequence(),
                              sequence() if with_anchor else None, sequence() if with_anchor else None,
                              tuple(tuple(tokens(3, 12)) for _ in range(mlc_languages)))
            for i in range(count)]


def tokens_of(values: torch.Tensor, batch: Batch, sequence: int) -> torch.Tensor:
    """The per-token entries of one sequence, in order, from either layout."""
    flat = values.reshape(batch.segment_ids.numel(), *values.shape[batch.segment_ids.dim():])
    return flat[batch.segment_ids.reshape(-1) == sequence]


# ---- layout ------------------------------------------------------------------------------------------------------

def test_packed_layout_by_hand() -> None:
    example = PreferenceExample("r/x", "x", EncodedSequence((10, 11, 12, 13), 2), EncodedSequence((20, 21, 22), 2),
                                mlc_prompts=((30, 31), (40, 41, 42)))
    packed = PreferenceCollator(PAD, pad_to_multiple_of=8, packing=True)([example])
    n = IGNORE_INDEX
    assert packed.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22, 30, 31, 40, 41, 42, PAD, PAD, PAD, PAD]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2, 3]]
    assert packed.segment_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, -1, -1, -1, -1]]
    # shifted inside each sequence: a sequence's last token never predicts the next sequence's first
    assert packed.labels.tolist() == [[n, 12, 13, n, n, 22, n, n, n, n, n, n, n, n, n, n]]
    assert packed.attention_mask.tolist() == [[1] * 12 + [0] * 4]
    assert packed.num_sequences == 4 and packed.num_tokens == 12
    assert packed.mlc_token_index().tolist() == [8, 11]

    padded = PreferenceCollator(PAD, pad_to_multiple_of=8)([example])
    assert padded.input_ids.shape == (4, 8) and padded.position_ids is None
    assert padded.segment_ids[2].tolist() == [2, 2, -1, -1, -1, -1, -1, -1]
    assert padded.mlc_token_index().tolist() == [2 * 8 + 1, 3 * 8 + 2]

    sub = packed.sequences([1, 0])  # what the reference sees when it needs rejected then chosen
    assert sub.input_ids.tolist() == [[20, 21, 22, 10, 11, 12, 13]]
    assert sub.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert sub.segment_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    assert sub.labels.tolist() == [[n, 22, n, n, 12, 13, n]]
    assert sub.num_sequences == 2
    padded_sub = padded.sequences([1, 0])
    assert padded_sub.input_ids[:, :4].tolist() == [[20, 21, 22, PAD], [10, 11, 12, 13]]
    assert padded_sub.segment_ids[:, :4].tolist() == [[0, 0, 0, -1], [1, 1, 1, 1]]


def test_layout_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        pack_sequences([[1, 2], []], [[n for n in (IGNORE_INDEX, IGNORE_INDEX)], []], PAD)
    with pytest.raises(ValueError, match="one label per token"):
        pack_sequences([[1, 2]], [[IGNORE_INDEX]], PAD)
    batch = PreferenceCollator(PAD, packing=True)(random_examples(1, 50, False, 0, seed=0))
    with pytest.raises(ValueError, match=r"sequence indices in \[0, 2\)"):
        batch.sequences([0, 2])


def test_flash_attention_gets_varlen_boundaries(tokenizer) -> None:
    config = tiny_config("llama", tokenizer)
    config._attn_implementation = "flash_attention_2"
    position_ids = pack_sequences([[5] * 3, [6] * 5, [7] * 2], [[IGNORE_INDEX] * 3, [IGNORE_INDEX] * 5, [IGNORE_INDEX] * 2],
                                  PAD, pad_to_multiple_of=4).position_ids
    kwargs = packed_attention_kwargs(position_ids, config)
    assert kwargs["attention_mask"] is None and kwargs["position_ids"] is position_ids
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 8, 10, 12]  # the 2-token padding tail is a block of its own
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32 and kwargs["cu_seq_lens_k"] is kwargs["cu_seq_lens_q"]
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 5
    config._attn_implementation = "sdpa"
    assert set(packed_attention_kwargs(position_ids, config)) == {"attention_mask", "position_ids"}


# ---- packed == padded through the model -----------------------------------------------------------------------------

def float64_token_logprobs(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain HF model on ONE sequence alone, float64 full logits (HF applies Gemma-2's soft-cap itself)."""
    logits = model(input_ids=ids[None]).logits[0].double()
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0)[:, None])[:, 0]
    return torch.where(labels != IGNORE_INDEX, picked, 0.0)


@pytest.mark.parametrize("family,attn", FAMILIES)
def test_forward_outputs_match_padded_and_float64(family: str, attn: str, tokenizer) -> None:
    examples = random_examples(3, len(tokenizer), with_anchor=True, mlc_languages=3, seed=1)
    padded = PreferenceCollator(PAD)(examples)
    packed = PreferenceCollator(PAD, pad_to_multiple_of=16, packing=True)(examples)
    model = alignment_model(family, attn, tokenizer, seed=0, mlc_layer=1).eval()
    reference_model = hf_model(family, attn, tokenizer, seed=0).double().eval()
    with torch.no_grad():
        out_padded = _call_model(model, padded, None, with_mlc=True)
        out_packed = _call_model(model, packed, None, with_mlc=True)
        for s in range(padded.num_sequences):
            from_packed = tokens_of(out_packed.token_logprobs, packed, s)
            torch.testing.assert_close(from_packed, tokens_of(out_padded.token_logprobs, padded, s), rtol=0, atol=1e-5)
            expected = float64_token_logprobs(reference_model, tokens_of(packed.input_ids, packed, s),
                                              tokens_of(packed.labels, packed, s))
            if s >= padded.rows("rejected").stop:  # anchors and MLC prompts: the policy's head scores none of them
                expected = torch.zeros_like(expected)
            torch.testing.assert_close(from_packed.double(), expected, rtol=0, atol=1e-4)
        sums_padded, counts_padded = sequence_sums(out_padded.token_logprobs, padded.sequences())
        sums_packed, counts_packed = sequence_sums(out_packed.token_logprobs, packed.sequences())
        assert torch.equal(counts_packed, counts_padded) and counts_packed[: padded.preference_rows].min() >= 2
        torch.testing.assert_close(sums_packed, sums_padded, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(sums_packed / counts_packed.clamp_min(1), sums_padded / counts_padded.clamp_min(1),
                                   rtol=1e-6, atol=1e-6)
        everything = slice(0, padded.num_sequences)
        torch.testing.assert_close(pooled_hidden(out_packed.last_hidden, packed.sequences(), everything, "masked"),
                                   pooled_hidden(out_padded.last_hidden, padded.sequences(), everything, "masked"),
                                   rtol=1e-5, atol=1e-5)
        assert out_packed.mlc_vectors.shape == (3 * 3, 8)
        torch.testing.assert_close(out_packed.mlc_vectors, out_padded.mlc_vectors, rtol=1e-5, atol=1e-5)


def one_step(policy: AlignmentModel, reference: AlignmentModel, batch: Batch, loss_name: str) -> tuple[float, dict]:
    """The trainer's micro-step without DeepSpeed: policy + reference sub-batch -> loss (+ 0.5 x MLC) -> backward."""
    loss_fn = build_loss(loss_name, {"alpha": 1.0, "beta": 1.5} if loss_name == "mpo" else {})
    policy.zero_grad(set_to_none=True)
    policy_out = _call_model(policy, batch, None, with_mlc=True)
    plan = ReferencePlan.for_loss(loss_fn, batch)
    with torch.no_grad():
        reference_out = _call_model(reference, batch, plan.rows, with_mlc=False)
    terms = reference_terms(reference_out, plan, batch, loss_fn)
    base = loss_fn(preference_inputs(policy_out, terms, batch, loss_fn))
    out = total_loss(base, policy_out, batch, mlc_weight=0.5, mlc_tau=0.2, mlc_eps=1e-12)
    out.loss.backward()
    return float(out.loss.detach()), {name: p.grad.clone() for name, p in policy.named_parameters()}


@pytest.mark.parametrize("loss_name", ["mpo", "dpo"])
@pytest.mark.parametrize("family,attn", FAMILIES)
def test_loss_and_every_gradient_match_padded(family: str, attn: str, loss_name: str, tokenizer) -> None:
    """On the machine's device, packed with the attention the library loads for packing (a GPU: flex_attention for
    sdpa) against padded with the attention asked for."""
    packed_attn = attention_implementation(attn, packing=True, on_gpu=DEVICE.type == "cuda")
    examples = random_examples(3, len(tokenizer), with_anchor=loss_name == "mpo", mlc_languages=2, seed=2)

    def step(attention: str, packing: bool) -> tuple[float, dict]:
        policy = alignment_model(family, attention, tokenizer, seed=0).to(DEVICE)
        reference = alignment_model(family, attention, tokenizer, seed=7).eval().to(DEVICE)  # MPO's L2 is not 0
        return one_step(policy, reference, PreferenceCollator(PAD, packing=packing)(examples).to(DEVICE), loss_name)

    loss_padded, grads_padded = step(attn, packing=False)
    loss_packed, grads_packed = step(packed_attn, packing=True)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=1e-6)
    assert grads_packed.keys() == grads_padded.keys()
    for name, grad in grads_padded.items():
        assert grad.abs().max() > 0, f"{name} got no gradient: the comparison would prove nothing"
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_reward_gaps_match_padded(tokenizer) -> None:
    model = alignment_model("llama", "sdpa", tokenizer, seed=0).eval()
    examples = random_examples(5, len(tokenizer), with_anchor=False, mlc_languages=0, seed=3)

    def gaps(collator: PreferenceCollator) -> dict[str, float]:
        with torch.no_grad():
            return reward_gaps(lambda batch: _call_model(model, batch, None, with_mlc=False), examples, collator,
                               rank=0, world_size=1, batch_size=2, device=torch.device("cpu"))

    padded, packed = gaps(PreferenceCollator(PAD)), gaps(PreferenceCollator(PAD, packing=True))
    assert packed.keys() == padded.keys() == {"x", "y"}
    assert packed == pytest.approx(padded, abs=1e-6)


# ---- configuration and the trainer ------------------------------------------------------------------------------------

def test_all_positions_pooling_is_rejected_with_packing(tiny_models: dict[str, Path]) -> None:
    base = [f"model.path={tiny_models['llama']}", "loss.name=mpo", "loss.mpo.pooling=all_positions"]
    assert not load_config(None, base).data.packing
    with pytest.raises(ConfigError, match="loss.mpo.pooling: 'all_positions'.*data.packing"):
        load_config(None, base + ["data.packing=true"])
    batch = PreferenceCollator(PAD, packing=True)(random_examples(1, 50, False, 0, seed=0))
    with pytest.raises(ValueError, match="'all_positions'.*packed"):
        pooled_hidden(torch.zeros(1, batch.input_ids.shape[1], 4), batch.sequences(), slice(0, 2), "all_positions")


def test_trainer_first_step_loss_equals_padded(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    def first_loss(packing: bool) -> float:
        config = load_config(None, [
            f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path / str(packing)}", "train.max_steps=1",
            "train.micro_batch_size=2", "data.max_length=96", "data.max_prompt_length=48", "data.eval_files=[]",
            "loss.name=mpo", "loss.mpo.beta=1.5", "mlc.enabled=true", "mlc.dim=16", "mlc.languages=[en,zh,bn]",
            "logging.progress_bar=false", "logging.tensorboard=false", f"data.packing={str(packing).lower()}",
            "model.dtype=fp32",  # also on a GPU (the GPU session runs this file), where auto would be bf16
        ])
        result = Trainer(config).train()
        assert result.exit_code == 0 and result.steps_done == 1
        return result.losses[0]

    def live_fraction(packing: bool) -> float:
        rows = read_jsonl(tmp_path / str(packing) / "metrics.jsonl")
        return next(row["train/head/live_fraction"] for row in rows if row["step"] == 1)

    padded, packed = first_loss(False), first_loss(True)
    assert packed == pytest.approx(padded, rel=1e-5)
    # the same live positions (the training pair's responses) out of fewer positions when packed
    assert 0 < live_fraction(False) < live_fraction(True) < 1

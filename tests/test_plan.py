"""Tests of the memory planner (`mpo-dist plan`).

References are independent of the planner: published parameter counts, hand arithmetic for a tiny
model, DeepSpeed's own estimator, and the tensors a live DeepSpeed ZeRO-3 engine allocates.
"""
import json
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from mpo_dist.kernels.backward_budget import backward_temporary_bytes
from mpo_dist.cli import main
from mpo_dist.config import load_config
from mpo_dist.engine.ds_config import render_policy_config, with_reduce_bucket_capped
from mpo_dist.plan.memory import (
    FORWARD_BACKWARD,
    GIB,
    OPTIMIZER_STEP,
    REFERENCE_FORWARD,
    STEP_PHASES,
    PlanSettings,
    compare_with_deepspeed,
    optimizer_sub_group_params,
    plan_memory,
)
from mpo_dist.plan.model_shape import ModelSpecError, build_meta_model, load_hf_config, load_model_shape
from mpo_dist.train.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]

# hidden 64, intermediate 128, 2 layers, 4 heads (head_dim 16), 2 KV heads, vocab 1000, untied:
#   embeddings 1000*64 = 64,000; lm_head 64,000; final norm 64
#   per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12,288; MLP 3*64*128 = 24,576; 2 norms 128 -> 36,992
#   total 128,064 + 2*36,992 = 202,048; largest module (embedding / lm_head) 64,000
TINY_CONFIG = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False,
    "max_position_embeddings": 128,
}
TINY_PARAMS = 202_048
TINY_LARGEST_MODULE = 64_000


@pytest.fixture(scope="module")
def tiny_config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="module")
def shapes(tiny_config_path):
    return {name: load_model_shape(spec) for name, spec in
            (("tiny", str(tiny_config_path)), ("8b", "llama-3.1-8b"), ("70b", "llama-3.1-70b"))}


# --- model shape -------------------------------------------------------------------------------------------

def test_bundled_parameter_counts_match_published_sizes(shapes):
    assert shapes["70b"].total_params == pytest.approx(70.55e9, abs=0.01e9)
    assert shapes["8b"].total_params == pytest.approx(8.03e9, abs=0.01e9)
    assert load_model_shape("gemma-2-9b").total_params == pytest.approx(9.24e9, abs=0.01e9)
    assert load_model_shape("qwen2.5-7b").total_params == pytest.approx(7.62e9, abs=0.01e9)


def test_70b_is_built_on_meta_without_allocating():
    model = build_meta_model(load_hf_config("llama-3.1-70b"))
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)


def test_tiny_shape_by_hand(shapes, tiny_config_path):
    tiny = shapes["tiny"]
    assert (tiny.total_params, tiny.largest_module_params) == (TINY_PARAMS, TINY_LARGEST_MODULE)
    assert (tiny.n_layers, tiny.hidden_size, tiny.vocab_size, tiny.norms_per_layer) == (2, 64, 1000, 2)
    # a model directory resolves to its config.json
    assert load_model_shape(str(tiny_config_path.parent)).total_params == TINY_PARAMS


def test_tied_embeddings_counted_once(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_CONFIG | {"tie_word_embeddings": True}))
    tied = load_model_shape(str(path))
    assert tied.tied_embeddings
    assert tied.total_params == TINY_PARAMS - 1000 * 64


def test_gemma2_has_four_norms_per_layer_and_a_logit_softcap():
    gemma = load_model_shape("gemma-2-9b")
    assert gemma.norms_per_layer == 4 and gemma.final_logit_softcap == 30.0 and gemma.tied_embeddings


@pytest.mark.parametrize("contents, message", [
    (None, "no config.json"),
    ("{not json", "cannot read"),
    ('{"hidden_size": 8}', "no 'model_type'"),
    ('{"model_type": "no-such-architecture"}', "no-such-architecture"),
])
def test_bad_model_spec_errors_say_what_is_wrong(tmp_path, contents, message):
    if contents is not None:
        (tmp_path / "config.json").write_text(contents)
    with pytest.raises(ModelSpecError, match=message):
        load_model_shape(str(tmp_path))


# --- hand-computed plan for the tiny model -------------------------------------------------------------------

def _bytes_by_name(components):
    return {c.name: c.bytes for c in components}


def test_tiny_plan_by_hand(shapes):
    settings = PlanSettings(nodes=1, gpus_per_node=2, gpu_mem_gib=1, cpu_mem_gib=64, seq_len=8, micro_batch=1,
                            sequences_per_example=4, reference="online", head_chunk=16,
                            reduce_bucket_size=1000, sub_group_size=1000)
    plan = plan_memory(shapes["tiny"], settings)
    shard = 101_024  # 202,048 / 2 ranks
    tokens = 32  # 1 example x 4 sequences x 8 tokens
    # per token of one layer: 2 norms x (4 + 2) B x 64 = 768; attention 2 B x (q 64 + expanded K,V 2*64 + out 64)
    # + lse 4 B x 4 heads = 528; MLP 4 x 2 B x 128 = 1024 -> 2320 B
    expected_gpu = {
        "bf16 parameter shard": 2 * shard,
        "fp32 gradient shard": 4 * shard,  # grad_accum_dtype fp32, as in the shipped templates
        "fp32 master weights + Adam m, v": 12 * shard,
        "gradient reduce bucket": 2 * 1000,
        "CUDA context + fragmentation allowance": 3 * GIB,
        "gathered parameters (2 x largest module, bf16)": 4 * 64_000,
        "checkpointed layer inputs": 2 * tokens * 64 * 2,
        "one recomputed layer's activations": tokens * 2320,
        "activation gradients in flight": tokens * 2 * (3 * 128 + 2 * 64),
        "final norm": tokens * 6 * 64,
        "log-prob head workspace": 16 * 1000 * 8 + tokens * 64 * 4,
        "reference terms kept for the loss": 1 * (2 * 64 + 8) * 4,  # 1 pair: pooled hidden [2, 64] + 8 floats
        "fp32 gradients of one optimizer sub-group": 4 * (1000 + 32_000),  # sub-group + one module shard
        "reference: gathered parameters": 4 * 64_000,
        "reference: one layer's no-grad transients": 16 * 2 * (3 * 128 + 3 * 64),  # 2 sequences x 8 tokens
        "reference: log-prob head workspace": 16 * 1000 * 4,
    }
    assert _bytes_by_name(plan.gpu) == expected_gpu
    persistent = 18 * shard + 2000 + 3 * GIB
    forward_backward = 256_000 + 8192 + 74_240 + 32_768 + 12_288 + 136_192 + 544
    assert plan.gpu_peak_bytes == persistent + forward_backward
    assert _bytes_by_name(plan.cpu) == {"rank processes (host runtime allowance)": 2 * 4 * GIB,
                                        "reference parameters (offload_param, bf16 shards)": 2 * 2 * shard}
    assert not plan.fits  # 3 GiB of CUDA context alone exceeds the 1 GiB GPU


def test_tiny_plan_options_by_hand(shapes):
    base = dict(nodes=1, gpus_per_node=2, gpu_mem_gib=80, cpu_mem_gib=64, seq_len=8, head_chunk=16)
    offloaded = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(**base, offload_optimizer=True,
                                                                        reference="cache")).cpu)
    assert offloaded == {"rank processes (host runtime allowance)": 2 * 4 * GIB,
                         "offloaded fp32 master weights + Adam m, v": 12 * 2 * 101_024,
                         "offloaded fp32 gradients": 4 * 2 * 101_024,
                         "offloaded fp32 gradient shard": 4 * 2 * 101_024}
    half_accumulation = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(**base, grad_accum_dtype="bf16")).gpu)
    assert half_accumulation["bf16 gradient shard"] == 2 * 101_024
    # the half gradients are flattened (2 B), then converted to fp32 (4 B); the sub-group is the whole shard here
    assert half_accumulation["fp32 gradients of one optimizer sub-group"] == 6 * 101_024
    no_checkpointing = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(
        **base, activation_checkpointing=False, attention="eager")).gpu)
    eager_scores = 4 * 4 * 8 * 8 * (4 + 2)  # sequences x heads x seq^2 x (fp32 softmax + bf16 probabilities)
    assert no_checkpointing["all layers' activations"] == 2 * (32 * 2320 + eager_scores)
    packed = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(
        **base, activation_checkpointing=False, attention="eager", packing=True)).gpu)
    packed_scores = 1 * 4 * (4 * 8) ** 2 * (4 + 2)  # one row of 4 sequences x 8 tokens: (S x T)^2, S = 4 times more
    assert packed_scores == 4 * eager_scores
    assert packed["all layers' activations"] == 2 * (32 * 2320 + packed_scores)
    flash_packed = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(**base, packing=True)).gpu)
    assert flash_packed == _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(**base)).gpu)  # linear kernels
    assert "checkpointed layer inputs" not in no_checkpointing
    first_layer_only = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(**base, checkpointed_layers=1)).gpu)
    assert first_layer_only["checkpointed layer inputs"] == 1 * 32 * 64 * 2
    assert first_layer_only["one recomputed layer's activations"] == 32 * 2320
    assert first_layer_only["activations of the layers not checkpointed"] == 1 * 32 * 2320
    with pytest.raises(ValueError, match="more than the model's 2 decoder layers"):
        plan_memory(shapes["tiny"], PlanSettings(**base, checkpointed_layers=3))
    triton = _bytes_by_name(plan_memory(shapes["tiny"], PlanSettings(**base | {"head_chunk": 0})).gpu)
    # per token lse + label logit (fp32); backward: the lo half of grad_hidden (bf16) + the whole-vocab grad-logit chunk
    vocab = shapes["tiny"].vocab_size
    assert triton["log-prob head workspace (Triton kernel)"] == 32 * 8 + 32 * 64 * 2 + 32 * vocab * 2
    # at the benchmark's shape the backward takes 120 MiB (grad-logit chunk) + 128 MiB (residual), within 0.25 GiB
    assert backward_temporary_bytes(16384, 4096, 128256, 2) == (120 + 128) * 2**20


def test_sub_group_is_the_whole_shard_when_the_shard_is_small(shapes):
    assert optimizer_sub_group_params(shapes["8b"], 32, 1_000_000_000) == -(-8_030_261_248 // 32)


# --- cross-checks against DeepSpeed ------------------------------------------------------------------------

@pytest.mark.parametrize("model, nodes, gpus", [("tiny", 1, 1), ("tiny", 1, 2), ("8b", 1, 8), ("8b", 2, 8),
                                                ("70b", 4, 8), ("70b", 8, 8)])
def test_offloaded_model_states_agree_with_deepspeed_estimator(shapes, model, nodes, gpus):
    check = compare_with_deepspeed(shapes[model], nodes, gpus, offload_optimizer=True)
    assert abs(check.gpu_relative_difference) <= 0.05


@pytest.mark.parametrize("model, nodes, gpus", [("tiny", 1, 1), ("tiny", 1, 2), ("8b", 1, 8), ("8b", 2, 8),
                                                ("70b", 4, 8), ("70b", 8, 8)])
def test_model_states_agree_with_deepspeed_estimator_with_fp32_gradient_accumulation(shapes, model, nodes, gpus):
    """The shipped templates accumulate gradients in fp32: 18 B/param, which is what DeepSpeed's estimator assumes."""
    check = compare_with_deepspeed(shapes[model], nodes, gpus, offload_optimizer=False)
    assert abs(check.gpu_relative_difference) <= 0.05


@pytest.mark.parametrize("model, nodes, gpus", [("tiny", 1, 1), ("8b", 1, 8), ("70b", 4, 8)])
def test_half_gradient_accumulation_is_two_bytes_per_param_below_the_estimator(shapes, model, nodes, gpus):
    """With grad_accum_dtype = bf16 DeepSpeed keeps a 2 B gradient shard (see the live-engine test), while its
    estimator always charges 4 B: the difference is exactly 2 B x shard (up to the estimator's integer rounding)."""
    shape = shapes[model]
    check = compare_with_deepspeed(shape, nodes, gpus, offload_optimizer=False, grad_accum_dtype="bf16")
    shard = -(-shape.total_params // (nodes * gpus))
    assert check.deepspeed_gpu_bytes - check.planner_gpu_bytes == pytest.approx(2 * shard, abs=64)


LIVE_ENGINE_SCRIPT = r"""
import json, os, sys, torch, deepspeed
from transformers import AutoConfig, AutoModelForCausalLM
config = json.loads(sys.argv[1]); model_type = config.pop("model_type")
for ds_config in json.loads(sys.argv[2]):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    ids = torch.randint(0, 1000, (1, 16))
    engine.backward(engine(input_ids=ids, labels=ids).loss); engine.step()
    opt = engine.optimizer
    nbytes = lambda t: t.numel() * t.element_size()
    adam = sum(nbytes(v) for s in opt.optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))
    print("RESULT " + json.dumps({
        "lp_params": nbytes(opt.lp_param_buffer),
        "grad_partitions": nbytes(opt.grad_partitions_flat_buffer),
        "fp32_master_and_adam": sum(nbytes(t) for t in opt.fp32_partitioned_groups_flat) + adam,
        "fp32_grads_after_step": [t.grad is not None for t in opt.fp32_partitioned_groups_flat],
        "reduce_bucket": sum(nbytes(b.buffer) for b in opt.ipg_buckets.values()),
        "largest_sub_group": max(t.numel() for t in opt.fp32_partitioned_groups_flat)}), flush=True)
    del engine, opt, model
"""


LIVE_ENGINE_CONFIG = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True},
                      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
                      "zero_optimization": {"stage": 3, "sub_group_size": 50000, "reduce_bucket_size": 12345}}
GRAD_ACCUM_DTYPES = ["fp32", "bf16"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _live_engines(ds_configs: list[dict]) -> list[dict]:
    """The tensors a one-rank ZeRO-3 engine on CPU holds after one step of the tiny model, under each of `ds_configs`
    in turn (one interpreter for all: its start-up costs more than the engines)."""
    env = os.environ | {"DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run([sys.executable, "-c", LIVE_ENGINE_SCRIPT, json.dumps(TINY_CONFIG),
                                json.dumps(ds_configs)], env=env, capture_output=True, text=True, timeout=600)
    result_lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result_lines) == len(ds_configs), completed.stdout[-3000:] + completed.stderr[-3000:]
    return [json.loads(line.removeprefix("RESULT ")) for line in result_lines]


@pytest.fixture(scope="module")
def live_engines() -> dict[str, dict]:
    """grad_accum_dtype -> what the live engine with LIVE_ENGINE_CONFIG and that gradient dtype holds."""
    configs = [LIVE_ENGINE_CONFIG | {"data_types": {"grad_accum_dtype": dtype}} for dtype in GRAD_ACCUM_DTYPES]
    return dict(zip(GRAD_ACCUM_DTYPES, _live_engines(configs)))


@pytest.mark.parametrize("grad_accum_dtype", GRAD_ACCUM_DTYPES)
def test_persistent_model_states_match_a_live_deepspeed_engine(shapes, live_engines, grad_accum_dtype):
    """One-rank ZeRO-3 engine on CPU: the bytes it really holds are the bytes the planner charges."""
    live = live_engines[grad_accum_dtype]
    settings = PlanSettings(nodes=1, gpus_per_node=1, gpu_mem_gib=80, cpu_mem_gib=64, reduce_bucket_size=12345,
                            sub_group_size=50000, grad_accum_dtype=grad_accum_dtype)
    planned = _bytes_by_name(plan_memory(shapes["tiny"], settings).gpu)
    assert planned["bf16 parameter shard"] == live["lp_params"]
    assert planned[f"{grad_accum_dtype} gradient shard"] == live["grad_partitions"]
    assert planned["fp32 master weights + Adam m, v"] == live["fp32_master_and_adam"]
    assert planned["gradient reduce bucket"] == live["reduce_bucket"]
    assert not any(live["fp32_grads_after_step"])  # fp32 gradients are transient, not persistent
    assert live["largest_sub_group"] <= optimizer_sub_group_params(shapes["tiny"], 1, 50000)


# --- gradient bucket sizes ------------------------------------------------------------------------------------

def _default_policy_template(hidden_size: int) -> dict:
    """deepspeed_configs/zero3_policy.json as the trainer renders it for a bf16 model of this hidden size."""
    config = load_config(None, ["model.path=/models/placeholder"])
    return render_policy_config(config, world_size=1, dtype="bf16", hidden_size=hidden_size, on_gpu=True)


@pytest.mark.parametrize("model, elements", [("tiny", TINY_PARAMS), ("8b", 500_000_000), ("70b", 500_000_000)])
def test_the_default_templates_bucket_is_capped_at_the_parameter_count(shapes, model, elements):
    """DeepSpeed allocates the whole reduce bucket up front; the default template's 5e8 elements are 2,500 x the tiny
    model's parameters. The engine gets min(5e8, parameters), and the planner charges that, 2 B per element."""
    shape = shapes[model]
    rendered = _default_policy_template(shape.hidden_size)
    assert rendered["zero_optimization"]["reduce_bucket_size"] == 500_000_000  # the template's, for throughput
    capped = with_reduce_bucket_capped(rendered, shape.total_params)
    assert capped["zero_optimization"]["reduce_bucket_size"] == elements
    planned = _bytes_by_name(plan_memory(shape, PlanSettings(1, 1, 80, 64, reduce_bucket_size=500_000_000)).gpu)
    assert planned["gradient reduce bucket"] == 2 * elements


def test_plan_auto_bucket_is_what_auto_renders(tiny_config_path, capsys):
    assert _cli(["plan", "--model", str(tiny_config_path), "--nodes", "1", "--gpus-per-node", "1", "--gpu-mem", "80",
                 "--cpu-mem", "64", "--reduce-bucket-size", "auto", "--json"]) == 0
    components = json.loads(capsys.readouterr().out)["gpu_per_gpu"]["components"]
    assert {c["component"]: c["bytes"] for c in components}["gradient reduce bucket"] == 2 * 64 * 64


def test_the_trainers_engine_allocates_the_bucket_the_planner_charges(tiny_trainer, tiny_models):
    """The real policy engine (default template, tiny Llama, fp32 on the CPU): its bucket holds as many elements as
    the planner charges for (2 B each in the planner's bf16), not the template's 5e8."""
    buckets = tiny_trainer.policy.engine.optimizer.ipg_buckets.values()
    live_elements = sum(bucket.buffer.numel() for bucket in buckets)
    shape = load_model_shape(str(tiny_models["llama"]))
    planned = _bytes_by_name(plan_memory(shape, PlanSettings(1, 1, 80, 64)).gpu)["gradient reduce bucket"]
    assert live_elements == planned // 2 == shape.total_params < 500_000_000


# --- the 70B templates as DeepSpeed reads them -------------------------------------------------------------------

class _DataParallel:
    """The one thing DeepSpeedConfig asks a model-parallel unit: how many data-parallel ranks there are."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def get_data_parallel_world_size(self) -> int:
        return self.world_size


@pytest.mark.parametrize("template, offload", [("zero3_70b", False), ("zero3_70b_offload_optimizer", True)])
def test_70b_templates_resolve_in_deepspeeds_own_config_class_at_32_ranks(template, offload):
    """What the 70B run on 4 x 8 GPUs hands DeepSpeed, parsed by DeepSpeed's DeepSpeedConfig (its validation and
    batch arithmetic at 32 data-parallel ranks), and the settings the planner and docs/scaling.md rely on."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from mpo_dist.engine.engines import init_distributed

    init_distributed()  # DeepSpeedConfig reads the world size through the process group it finds (here one rank)
    config = load_config(REPO_ROOT / "configs" / "llama-3.1-70b-mpo.yaml",
                         ["model.path=/models/placeholder", f"engine.policy_config=deepspeed_configs/{template}.json"])
    rendered = render_policy_config(config, world_size=32, dtype="bf16", hidden_size=8192, on_gpu=True)
    resolved = DeepSpeedConfig(rendered, mpu=_DataParallel(32))
    zero = resolved.zero_config
    micro, accumulation = config.train.micro_batch_size, config.train.gradient_accumulation
    assert (resolved.train_batch_size, resolved.train_micro_batch_size_per_gpu) == (32 * micro * accumulation, micro)
    assert resolved.gradient_accumulation_steps == accumulation and resolved.bfloat16_config.enabled
    assert resolved.grad_accum_dtype == PlanSettings(1, 1, 1, 1).grad_accum_dtype == "fp32"
    assert (zero.stage, zero.reduce_bucket_size, zero.prefetch_bucket_size) == (3, 500_000_000, 1_000_000_000)
    assert (zero.max_live_parameters, zero.sub_group_size, zero.param_persistence_threshold) == (
        2_000_000_000, 1_000_000_000, 10 * 8192)
    assert zero.overlap_comm and zero.contiguous_gradients and not zero.gather_16bit_weights_on_model_save
    if offload:
        assert zero.offload_optimizer.device == "cpu" and zero.offload_optimizer.pin_memory
    else:
        assert zero.offload_optimizer is None
    assert resolved.optimizer_params["lr"] == config.optim.lr and resolved.gradient_clipping == config.optim.max_grad_norm


@pytest.mark.parametrize("template", ["zero3_policy", "zero3_8b_1node", "zero3_70b", "zero3_70b_offload_optimizer"])
def test_planner_default_gradient_dtype_is_the_shipped_templates(template):
    rendered = json.loads((REPO_ROOT / "deepspeed_configs" / f"{template}.json").read_text())
    assert rendered["data_types"]["grad_accum_dtype"] == PlanSettings(1, 1, 1, 1).grad_accum_dtype


# --- the planner's phases are the step's phases ---------------------------------------------------------------

class _Held:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedActivations:
    """Bytes autograd keeps for backward while they are alive, counted per save. Parameters are left out: ZeRO-3
    gathers and releases those itself (the planner's "gathered parameters")."""

    def __init__(self) -> None:
        self.live = 0

    def pack(self, tensor: torch.Tensor):
        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        held, nbytes = _Held(tensor), tensor.numel() * tensor.element_size()
        self.live += nbytes
        weakref.finalize(held, self._release, nbytes)
        return held

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    @staticmethod
    def unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed


@pytest.fixture(scope="module")
def tiny_trainer(tiny_models, tmp_path_factory) -> Trainer:
    """The real trainer on the tiny Llama: MPO, online reference, the default policy template, fp32 on the CPU."""
    return Trainer(load_config(None, [
        f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path_factory.mktemp('run')}",
        "train.micro_batch_size=2", "data.max_length=128", "data.max_prompt_length=64", "data.eval_files=[]",
        "loss.name=mpo", "engine.reference=online", "logging.progress_bar=false", "logging.tensorboard=false",
    ]))


def test_the_step_runs_the_planners_phases_in_order_each_freed_before_the_next(tiny_trainer):
    """The plan's peak is persistent + the LARGEST phase, not a sum. That holds only if Trainer.micro_step runs the
    phases in STEP_PHASES order and no policy activation is alive when the reference forward or the optimizer step
    starts: checked on the real step (online reference, MPO), whose engine calls are recorded with the live bytes."""
    trainer = tiny_trainer
    saved, calls = SavedActivations(), []

    def recorded(phase, method):
        def call(*args, **kwargs):
            calls.append((phase, method.__name__, saved.live))
            return method(*args, **kwargs)
        return call

    trainer.reference.forward = recorded(REFERENCE_FORWARD, trainer.reference.forward)
    trainer.policy.forward = recorded(FORWARD_BACKWARD, trainer.policy.forward)
    trainer.policy.backward = recorded(FORWARD_BACKWARD, trainer.policy.backward)
    trainer.policy.step = recorded(OPTIMIZER_STEP, trainer.policy.step)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        trainer.optimizer_step(0)

    phases = [phase for index, (phase, _, _) in enumerate(calls) if index == 0 or calls[index - 1][0] != phase]
    assert tuple(phases) == STEP_PHASES
    live = {name: bytes_ for _, name, bytes_ in calls}
    assert calls[0][1] == "forward" and calls[0][2] == 0  # the reference forward: no policy activation yet
    assert live["backward"] > 0  # the instrument sees the policy's activations
    assert live["step"] == 0  # all freed by backward before the optimizer step


# --- the headline plan and the command line ----------------------------------------------------------------

def test_llama_70b_mpo_fits_on_4_nodes_of_8_80gib_gpus(shapes):
    settings = PlanSettings(nodes=4, gpus_per_node=8, gpu_mem_gib=80, cpu_mem_gib=512, seq_len=1024,
                            micro_batch=1, sequences_per_example=4, reference="cache",
                            activation_checkpointing=True)
    plan = plan_memory(shapes["70b"], settings)
    assert plan.fits and plan.gpu_headroom >= 0.10


def _cli(argv):
    return main(argv)  # the real entry: its one place turns a user error into one line and exit 2


def test_cli_json_report(capsys):
    code = _cli(["plan", "--model", "llama-3.1-8b", "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem", "80",
                 "--cpu-mem", "512", "--reference", "cache", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["fits"] is True
    assert report["model"]["total_params"] == 8_030_261_248
    assert report["gpu_per_gpu"]["budget_gib"] == 80
    assert report["deepspeed_cross_check"]["deepspeed_gpu_bytes"] > 0


def test_cli_table_and_does_not_fit_exit_status(capsys):
    code = _cli(["plan", "--model", "llama-3.1-70b", "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem", "80",
                 "--cpu-mem", "512"])
    out = capsys.readouterr().out
    assert code == 1 and out.rstrip().endswith("DOES NOT FIT") and "peak per GPU" in out


def test_cli_bad_model_path_is_a_clear_error(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    code = _cli(["plan", "--model", str(missing), "--nodes", "1", "--gpus-per-node", "1", "--gpu-mem", "80",
                 "--cpu-mem", "64"])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "bundled model name" in err and "llama-3.1-8b" in err


def test_cli_bad_settings_are_a_clear_error(capsys):
    code = _cli(["plan", "--model", "llama-3.1-8b", "--nodes", "0", "--gpus-per-node", "8", "--gpu-mem", "80",
                 "--cpu-mem", "64"])
    assert code == 2 and "nodes must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, reference_rows", [
    (["loss.name=mpo"], 2),  # the dominant chosen + rejected
    (["loss.name=mpo", "loss.mpo.gap=dpo"], 4),  # + the training pair (docs/methods/mpo.md, gap "dpo")
    (["loss.name=dpo"], 2),  # the training pair
])
def test_check_plans_the_reference_rows_the_loss_scores(tiny_models, overrides, reference_rows) -> None:
    from mpo_dist.check.memory_plan import plan_settings

    config = load_config(None, [f"model.path={tiny_models['llama']}", *overrides])
    settings = plan_settings(config, nodes=1, gpus_per_node=1, dtype="bf16", hidden_size=64, gpu_mem_gib=80,
                             cpu_mem_gib=100)
    assert settings.reference_sequences_per_example == reference_rows

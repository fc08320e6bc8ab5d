"""The embedded default model: the training script's pieces, the shipped checkpoint, and what it learned."""

from __future__ import annotations

import functools
import json
import lzma
import random

import average_checkpoints
import pytest
import pytest_asyncio
import torch
import train_default_model as train
from trajectories import record_run

from kimi_swarm import prompts
from kimi_swarm.backend import load_model
from kimi_swarm.backend.chat.chat_format import parse_assistant, render
from kimi_swarm.backend.chat.messages import Message
from kimi_swarm.backend.engine.engine import Engine
from kimi_swarm.backend.engine.sampling import SamplingParams
from kimi_swarm.backend.model import kda_layer
from kimi_swarm.backend.model.config import KimiLinearConfig
from kimi_swarm.backend.model.context import latent_attention
from kimi_swarm.backend.model.default_model import default_model_path
from kimi_swarm.backend.model.model import KimiLinearForCausalLM
from kimi_swarm.backend.model.tokenizer import ByteTokenizer, load_tokenizer
from kimi_swarm.function_tools import as_tool
from kimi_swarm.kernels.kda_reference import chunk_kda_reference
from kimi_swarm.launch import offline_web_tools, trained_tools
from kimi_swarm.offline_web import OfflineWeb, generate_site
from kimi_swarm.offline_web.tasks import grade, sample_task
from kimi_swarm.tools import Web
from kimi_swarm.tools.rank import rank

BASE_URL = "http://127.0.0.1:40123/"



@pytest.fixture
def tiny_model(monkeypatch) -> KimiLinearForCausalLM:
    monkeypatch.setattr(kda_layer, "chunk_kda",
                        train.recomputed(functools.partial(chunk_kda_reference, chunk_size=16)))
    model = KimiLinearForCausalLM(KimiLinearConfig.from_dict(train.default_config(hidden=64, layers=4)))
    train.init_weights(model, seed=0)
    return model


def test_core_check_accepts_a_matching_core_and_names_what_a_wrong_one_gets_wrong():
    cpu = torch.device("cpu")
    assert train.core_mismatch(functools.partial(chunk_kda_reference, chunk_size=64), cpu) is None

    def forgets_the_initial_state(*args, initial_state=None, **kwargs):
        return chunk_kda_reference(*args, initial_state=initial_state * 0, **kwargs)

    assert train.core_mismatch(forgets_the_initial_state, cpu).startswith("output relative error")


def test_training_falls_back_to_its_own_core_without_fla(capsys):
    core = train.training_core("fla", 32, torch.device("cpu"))
    assert "using chunk_kda_reference" in capsys.readouterr().out
    assert train.core_mismatch(core, torch.device("cpu")) is None


def test_training_attention_matches_latent_attention():
    config = KimiLinearConfig.from_dict(train.default_config())
    context = train.TrainingContext(config, 2, torch.device("cpu"))
    q_latent, q_pe, latent = torch.randn(2, 37, 4, 64), torch.randn(2, 37, 4, 16), torch.randn(2, 37, 80)
    torch.testing.assert_close(context.mla_attend(0, q_latent, q_pe, latent, 0.1),
                               latent_attention(q_latent, q_pe, latent, 0.1), atol=1e-5, rtol=1e-5)


def test_shared_prefix_training_equals_the_full_forward(tiny_model):
    torch.manual_seed(1)
    prefix, ids = torch.randint(0, 273, (37,)), torch.randint(0, 273, (3, 29))
    full = torch.cat([prefix[None].expand(3, -1), ids], dim=1)
    shared = train.training_logits(tiny_model, ids, prefix)
    torch.testing.assert_close(shared, tiny_model(full)[:, 37:], atol=1e-5, rtol=1e-5)
    shared.square().mean().backward()
    with_prefix = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    train.training_logits(tiny_model, full)[:, 37:].square().mean().backward()
    for name, param in tiny_model.named_parameters():
        if name in with_prefix:
            torch.testing.assert_close(with_prefix[name], param.grad, atol=1e-6, rtol=1e-4)


def test_checkpoint_is_written_in_the_official_format(tiny_model, tmp_path):
    config = train.default_config(hidden=64, layers=4)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.safetensors").write_bytes(b"from an older save")
    train.save_checkpoint(tiny_model, config, out)  # replaces the whole folder once the new one is complete
    assert not (out / "stale.safetensors").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.1.block_sparse_moe.experts.7.w2.weight" in index
    assert "model.layers.0.mlp.gate_proj.weight" in index
    assert "model.layers.3.self_attn.kv_a_proj_with_mqa.weight" in index
    loaded = load_model(out)
    with torch.no_grad():  # the checkpoint keeps the KDA decay parameters and router bias in fp32, the rest in bf16
        for name, param in tiny_model.named_parameters():
            if not name.endswith(("A_log", "dt_bias", "e_score_correction_bias")):
                param.copy_(param.bfloat16().float())
    ids = torch.randint(0, 273, (1, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(ids), tiny_model(ids), atol=1e-5, rtol=1e-5)
    assert isinstance(load_tokenizer(out), ByteTokenizer)


def test_averaged_checkpoint_holds_the_mean_of_its_parents_and_loads(tiny_model, tmp_path):
    config = train.default_config(hidden=64, layers=4)
    train.save_checkpoint(tiny_model, config, tmp_path / "a")
    train.init_weights(tiny_model, seed=1)
    train.save_checkpoint(tiny_model, config, tmp_path / "b")
    average_checkpoints.average_checkpoints([tmp_path / "a", tmp_path / "b"], [0.25, 0.75], tmp_path / "mean")
    parents = [load_model(tmp_path / name).state_dict() for name in ("a", "b")]
    mean = load_model(tmp_path / "mean").state_dict()
    assert mean.keys() == parents[0].keys()
    changed = 0
    for name, tensor in mean.items():
        expected = 0.25 * parents[0][name] + 0.75 * parents[1][name]
        torch.testing.assert_close(tensor, expected, atol=1e-4, rtol=8e-3)
        changed += not torch.equal(parents[0][name], parents[1][name])
    assert changed > 10
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "num_experts": 4}))
    with pytest.raises(ValueError, match="config.json differs"):
        average_checkpoints.average_checkpoints([tmp_path / "a", tmp_path / "b"], [0.5, 0.5], tmp_path / "other")
    with pytest.raises(ValueError, match="sum to 1"):
        average_checkpoints.average_checkpoints([tmp_path / "a", tmp_path / "a"], [0.5, 0.6], tmp_path / "other")


def test_widening_adds_heads_and_latent_channels_without_changing_the_outputs(tiny_model):
    config = train.default_config(hidden=64, layers=4)
    old = KimiLinearConfig.from_dict(config)
    wide, wide_config = train.widened(tiny_model, config, old.kda_heads + 2, old.num_attention_heads + 3,
                                      old.kv_lora_rank * 2)
    assert KimiLinearConfig.from_dict(wide_config).kda_heads == old.kda_heads + 2 and config == train.default_config(
        hidden=64, layers=4)
    ids = torch.randint(0, 273, (2, 45), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(wide(ids), tiny_model(ids), atol=1e-4, rtol=1e-4)
    train.training_logits(wide, ids).square().mean().backward()
    mla = wide.model.layers[old.mla_layer_ids[0]].self_attn
    kda = wide.model.layers[old.kda_layer_ids[0]].self_attn
    new_columns = old.num_attention_heads * old.v_head_dim
    assert mla.o_proj.weight.grad[:, new_columns:].abs().sum() > 0  # the new heads learn from the first step
    assert kda.o_proj.weight.grad[:, old.kda_heads * old.kda_head_dim:].abs().sum() > 0
    assert mla.kv_a_proj_with_mqa.weight.grad[old.kv_lora_rank:2 * old.kv_lora_rank].abs().sum() > 0
    with pytest.raises(ValueError, match="widening only adds"):
        train.widened(tiny_model, config, old.kda_heads - 1, old.num_attention_heads, old.kv_lora_rank)


def test_number_remap_redraws_each_value_once_in_order_and_format():
    """Every number of 3+ digits gets one fresh value of as many digits wherever it appears (in its own
    format), larger values stay larger, and nothing else moves: IP digits, small numbers, specials."""
    tokenizer = ByteTokenizer()
    text = ("<|im_user|>user<|im_middle|>Compare 1585 and 4,000 and 73.<|im_end|>"
            "http://127.0.0.1:39097/city/a.html founded 1585, population 18,954, 18954 people; "
            "http://127.0.0.1:39097/city/b.html population 4,000,000, item 051.<|im_end|>")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int16)
    spans = train.number_spans(ids)
    assert sorted({s.value for s in spans}) == [1585, 4000, 18954, 39097, 4000000]
    remapped = train.remap_numbers(ids, spans, random.Random(1))
    out = tokenizer.decode(remapped.tolist())
    assert len(out) == len(text) and all(a == b or a.isdigit() and b.isdigit() for a, b in zip(text, out)), out
    found = [(tokenizer.decode(ids[s.start:s.end].tolist()), tokenizer.decode(remapped[s.start:s.end].tolist()))
             for s in spans]
    fresh = {old.replace(",", ""): new.replace(",", "") for old, new in found}
    assert all(fresh[old.replace(",", "")] == new.replace(",", "") for old, new in found)
    assert all(len(new) == len(old) for old, new in fresh.items())
    assert sorted(fresh, key=int) == sorted(fresh, key=lambda old: int(fresh[old]))
    assert fresh != {old: old for old in fresh}
    assert out.count("127.0.0.1:") == 2 and " and 73." in out and "item 051." in out


def test_orchestrator_trajectories_are_repeated_and_batched_by_prefix(tmp_path):
    """--orchestrator-repeats lists each orchestrator trajectory that many times and nothing else twice;
    every batch still holds one shared prefix and every example exactly as often as it is listed."""
    def record(role: str, head: str, body: str) -> str:
        return json.dumps({"family": "compare", "role": role,
                           "segments": [[f"{head}<|im_user|>user<|im_middle|>task<|im_end|>", False], [body, True]]})
    lines = [record("orchestrator", "sys A", "plan 1234"), record("subagent", "sys A", "found 5678"),
             record("subagent", "sys B", "found 42"), record("orchestrator", "sys B", "answer 9999")]
    data = tmp_path / "t.jsonl.xz"
    with lzma.open(data, "wt", encoding="utf-8") as sink:
        sink.write("\n".join(lines) + "\n")
    prefixes, examples = train.load_examples([data], ByteTokenizer(), max_len=1000, orchestrator_repeats=3)
    assert len(prefixes) == 2 and len(examples) == 8
    bodies = [ByteTokenizer().decode(e.ids.tolist()) for e in examples]
    assert sum("plan 1234" in b for b in bodies) == 3 and sum("found 5678" in b for b in bodies) == 1
    batches = train.make_batches(examples, tokens_per_batch=512, rng=random.Random(0))
    assert sorted(i for batch in batches for i in batch) == list(range(8))
    assert all(len({examples[i].prefix for i in batch}) == 1 for batch in batches)


@pytest.fixture(scope="module")
def shipped():
    path = default_model_path()
    return path, load_model(path), load_tokenizer(path)


def test_shipped_checkpoint_is_a_small_kimi_linear(shipped):
    path, model, tokenizer = shipped
    assert sum(f.stat().st_size for f in path.glob("*.safetensors")) <= 50 * 1024 * 1024
    config = model.config
    kinds = config.layer_types
    assert kinds.count("linear_attention") == 3 * kinds.count("full_attention") > 0
    assert config.num_experts > 1 and config.num_shared_experts == 1 and "sparse" in config.mlp_layer_types
    params = sum(p.numel() for p in model.parameters())
    assert 3e6 <= params <= 50e6
    assert tokenizer.vocab_size == config.vocab_size
    assert tokenizer.special_ids["<|im_end|>"] in config.eos_token_ids


def test_shipped_checkpoint_gives_transformers_the_same_logits(shipped):
    from transformers import KimiLinearForCausalLM as TransformersKimi

    path, model, tokenizer = shipped
    reference = TransformersKimi.from_pretrained(path, dtype=torch.float32).eval()
    text = render([Message(role="user", content="Which city is older?")], add_generation_prompt=True)
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        expected = reference(ids).logits
    torch.testing.assert_close(model(ids), expected, atol=2e-4, rtol=2e-4)


@pytest.fixture
def engine(shipped):
    """The in-process engine over the shipped checkpoint, as `swarm run` uses it on this machine."""
    engine = Engine.from_pretrained(shipped[0], device="cpu")
    yield engine
    engine.shutdown()


async def _greedy(engine: Engine, prompt: str, max_tokens: int) -> str:
    """The engine's greedy continuation of `prompt` (one session: prefill, then decode)."""
    session = await engine.session(prompt)
    completion = await session.generate(SamplingParams(max_tokens=max_tokens, temperature=0.0))
    session.close()
    return completion.text


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    manifest = generate_site(tmp_path_factory.mktemp("site"), seed=0)
    specs = [prompts.SPAWN_TOOL] + [as_tool(t).spec for t in trained_tools(Web())]
    return manifest, specs


async def test_default_model_opens_its_plan_with_a_spawn_agents_call(engine, heldout):
    """What the shipped model has learned: the orchestrator's call format (a random model writes noise)."""
    manifest, specs = heldout
    task = sample_task(manifest, "two_hop", "heldout", random.Random(5))
    opening = await _greedy(engine, render(prompts.orchestrator_messages(task.prompt), specs), 60)
    assert opening.startswith("<|tool_calls_section_begin|><|tool_call_begin|>functions.spawn_agents:0"
                              '<|tool_call_argument_begin|>{"tasks": ["Find the '), opening


async def test_engine_greedy_decode_is_the_full_forward_argmax(engine, shipped, heldout):
    """The paged engine (prefill, KDA states, MLA latent cache, batched decode) continues a held-out task
    exactly as a plain forward over the whole text would: wrong answers are the model's, not the engine's.
    A mismatch is allowed only at a near tie of the two logits."""
    _, model, tokenizer = shipped
    manifest, specs = heldout
    task = sample_task(manifest, "compare", "heldout", random.Random(3), 3)
    prompt = tokenizer.encode(render(prompts.orchestrator_messages(task.prompt), specs))
    session = await engine.session(prompt)
    generated = list((await session.generate(SamplingParams(max_tokens=120, temperature=0.0))).token_ids)
    session.close()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated]))[0, len(prompt) - 1:-1]
    best = logits.argmax(-1)
    ties = logits.gather(1, best[:, None])[:, 0] - logits.gather(1, torch.tensor(generated)[:, None])[:, 0]
    assert len(generated) > 20 and bool((ties <= 1e-3).all()), ties.max()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ranked_comparison(shipped, heldout) -> tuple:
    """A held-out comparison up to the model's rank call, generated once for the tests below: its greedy plan,
    the sub-agents' findings, its greedy rank call (each turn parsed; the plan must be right to go on)."""
    manifest, specs = heldout
    names = {t.name for t in specs}
    task = sample_task(manifest, "compare", "heldout", random.Random(3), 3)
    messages = prompts.orchestrator_messages(task.prompt)
    engine = Engine.from_pretrained(shipped[0], device="cpu")
    try:
        plan = parse_assistant(await _greedy(engine, render(messages, specs), 240), names)
        assert plan.malformed == [] and [c.name for c in plan.tool_calls] == [prompts.SPAWN_TOOL_NAME]
        assert json.loads(plan.tool_calls[0].arguments)["tasks"] == [lk.task for lk in task.waves[0]]
        assert plan.content == task.plan_note()
        call = plan.tool_calls[0]
        outcomes = [prompts.SubagentOutcome(task=lk.task, status="done", result=lk.finding(BASE_URL))
                    for lk in task.waves[0]]
        messages += [Message(role="assistant", content=plan.content, tool_calls=[call]),
                     prompts.spawn_result_message(call.id, outcomes)]
        ranking = parse_assistant(await _greedy(engine, render(messages, specs), 300), names)
    finally:
        engine.shutdown()
    assert [c.name for c in ranking.tool_calls] == ["rank"]
    return task, messages, ranking.tool_calls[0]


def test_default_model_ranks_in_the_questions_order(ranked_comparison):
    """The rank call's direction is the question's superlative, copied through the plan's Goal line."""
    task, _, rank_call = ranked_comparison
    assert json.loads(rank_call.arguments)["order"] == task.rank_arguments()["order"]


async def test_default_model_answers_a_heldout_comparison_from_its_ranking(engine, heldout, ranked_comparison):
    """Given the ranking of the true findings, the greedy answer names the first entity and cites its page."""
    task, messages, rank_call = ranked_comparison
    messages = messages + [Message(role="assistant", tool_calls=[rank_call]),
                           prompts.tool_result_message(rank_call.id, rank(**task.rank_arguments()))]
    answer = parse_assistant(await _greedy(engine, render(messages, heldout[1]), 600))
    score = grade(task, answer.content, BASE_URL)
    assert (score.correct, score.cited) == (1, 1), answer.content


def test_default_model_copies_every_finding_into_its_rank_call(ranked_comparison):
    """Every compared entity's value goes into the rank call under its own name (near-identical names included:
    this task has Qui Motors and Quio Industries)."""
    task, _, rank_call = ranked_comparison
    assert json.loads(rank_call.arguments)["values"] == task.rank_arguments()["values"]


async def test_default_model_plans_a_heldout_table_as_rows_that_are_its_answer(engine, heldout):
    """A held-out table's greedy plan: one task per name as the prompt spells it, the table's columns, final."""
    manifest, specs = heldout
    task = sample_task(manifest, "table", "heldout", random.Random(4), 5)
    plan = parse_assistant(await _greedy(engine, render(prompts.orchestrator_messages(task.prompt), specs), 600),
                           {t.name for t in specs})
    assert plan.malformed == [] and [c.name for c in plan.tool_calls] == [prompts.SPAWN_TOOL_NAME]
    assert json.loads(plan.tool_calls[0].arguments) == task.spawn_arguments(0)


async def test_default_model_answers_a_table_task_with_its_row(engine, tmp_path):
    """A held-out table's sub-agents, after the real search and fetch over the served offline web, each answer
    with their row as the teacher does: the name, the value on the page, the page in brackets."""
    with OfflineWeb.start(seed=0, cache_dir=tmp_path) as offline:
        web = offline_web_tools(offline)
        try:
            task = sample_task(offline.manifest, "table", "heldout", random.Random(6), 3)
            run = await record_run(task, offline.manifest, offline.base_url, trained_tools(web))
        finally:
            await web.aclose()
    assert run.errors == []
    for child in run.conversations[1:]:
        before_answer = render(child.messages[:-1], child.tools)
        answer = (await _greedy(engine, before_answer, 200)).removesuffix("<|im_end|>")
        assert answer == child.messages[-1].content

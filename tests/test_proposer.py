"""The built-in proposer: OpenAI schema, diffs that stock OpenEvolve applies, diversity, determinism,
adversarial proposals, and the pass rate of random proposals through the in-process gate.

Requests are built exactly as OpenEvolve 0.4.0 builds them: its own PromptSampler, fed the framework's
YAML prompt section, a parent program, top programs, inspirations and the parent's artifacts.
"""

from __future__ import annotations

import ast
import json
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from openevolve.config import load_config
from openevolve.prompt.sampler import PromptSampler
from openevolve.utils.code_utils import apply_diff, extract_diffs

import adversarial
from harness.proposer import mutations
from harness.proposer.catalogue import ADVERSARIAL_KINDS, CATALOGUE, EXPECTED_REASON
from harness.proposer.server import MODEL_NAME, Proposer, ProposerServer
from harness.trusted import program
from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.policy import check_block, module_aliases
from harness.scaffold import ATTENTION_KWARGS

FRAMEWORK_NAMES = sorted(FRAMEWORKS)
GATE_DRAWS = 30
GATE_MIN_PASS_RATE = 0.7


# --------------------------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def configs():
    import os

    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "local"  # the YAML reads ${OPENAI_API_KEY}
    try:
        yield {fw: load_config(str(REPO_ROOT / "openevolve_configs" / f"{fw}.yaml")) for fw in FRAMEWORK_NAMES}
    finally:
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("proposer") / "proposals.jsonl"
    srv = ProposerServer("127.0.0.1", 0, Proposer(seed=0, adversarial_every=0, log_path=log))
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def _program_dict(code: str, score: float, pid: str) -> dict:
    return {"id": pid, "code": code, "changes_description": "", "metrics": {"combined_score": score, "valid": 1.0},
            "metadata": {"changes": "knob change", "parent_metrics": {"combined_score": 1.0}}}


def openevolve_messages(config, current: str, others: list[str] = (), artifacts: dict | None = None) -> list[dict]:
    """The messages OpenEvolve's worker sends for one iteration (process_parallel.py + llm/openai.py)."""
    sampler = PromptSampler(config.prompt)
    programs = [_program_dict(code, 1.0 - 0.01 * i, f"p{i}") for i, code in enumerate([current, *others])]
    prompt = sampler.build_prompt(
        current_program=current, parent_program=current, program_metrics={"combined_score": 1.0, "valid": 1.0},
        previous_programs=programs[:3], top_programs=programs, inspirations=programs[1:3], language="python",
        evolution_round=3, diff_based_evolution=True,
        program_artifacts=artifacts or {"reason": "ok", "message": "valid", "hint": "Valid."},
        feature_dimensions=config.database.feature_dimensions,
    )
    return [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": prompt["user"]}]


def post(url: str, body: dict | bytes, path: str = "/chat/completions") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json",
                                                                      "Authorization": "Bearer local"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(url: str, messages: list[dict]) -> dict:
    status, reply = post(url, {"model": MODEL_NAME, "messages": messages, "temperature": 0.7,
                               "max_tokens": 8192, "seed": 42, "stream": False})
    assert status == 200, reply
    return reply


def check_child(framework: str, parent: str, response: str) -> str:
    """Apply the response with OpenEvolve's own functions; the child must keep the frozen outside and
    pass the static policy."""
    blocks = extract_diffs(response)
    assert len(blocks) == 1, response
    child = apply_diff(parent, response)
    assert child != parent
    assert sum(line.strip() == program.START for line in child.splitlines()) == 1
    assert sum(line.strip() == program.END for line in child.splitlines()) == 1
    seed = FRAMEWORKS[framework].seed_source()
    spliced = program.splice(seed, child)  # raises if anything outside the block changed
    assert spliced == child
    parts = program.split(spliced)
    report = check_block(parts.block, FRAMEWORKS[framework].class_name, ATTENTION_KWARGS,
                          module_aliases(parts.head))
    assert report.ok, report.violations
    return child


def chain(framework: str, steps: int, seed: int) -> list[str]:
    """Programs along a random walk of proposals from the seed."""
    code, out, rng = FRAMEWORKS[framework].seed_source(), [], random.Random(seed)
    for n in range(steps):
        code = mutations.propose(code, rng, n).child
        out.append(code)
    return out


# --------------------------------------------------------------------------------------------------------------------
# The server


def test_models_endpoint_and_completion_schema(server, configs):
    with urllib.request.urlopen(server.url + "/models", timeout=10) as response:
        models = json.loads(response.read())
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL_NAME
    messages = openevolve_messages(configs["ttr"], FRAMEWORKS["ttr"].seed_source())
    for path in ("/chat/completions",):
        status, reply = post(server.url, {"model": "harness-proposer", "messages": messages}, path)
        assert status == 200
        assert reply["object"] == "chat.completion" and reply["id"] and isinstance(reply["created"], int)
        assert reply["model"] == "harness-proposer"
        choice = reply["choices"][0]
        assert choice["index"] == 0 and choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant" and "<<<<<<< SEARCH" in choice["message"]["content"]
        usage = reply["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    # Without the /v1 prefix too.
    base = server.url[: -len("/v1")]
    status, reply = post(base, {"messages": messages}, "/chat/completions")
    assert status == 200 and reply["choices"][0]["message"]["content"]
    assert post(server.url, b"{not json")[0] == 400
    assert post(server.url, {"messages": messages}, "/completions")[0] == 404


def test_openai_client_talks_to_it(server, configs):
    """The client OpenEvolve uses (openai>=1), with OpenEvolve's request parameters."""
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="local", timeout=30, max_retries=0)
    messages = openevolve_messages(configs["mm"], FRAMEWORKS["mm"].seed_source())
    reply = client.chat.completions.create(model="harness-proposer", messages=messages, temperature=0.7,
                                           max_tokens=8192, seed=42, stream=False)
    assert reply.choices[0].message.content.count("<<<<<<< SEARCH") == 1
    assert reply.usage.total_tokens > 0


def test_program_without_prompt_program_gets_a_plain_answer(server):
    reply = chat(server.url, [{"role": "user", "content": "hello"}])
    content = reply["choices"][0]["message"]["content"]
    assert "SEARCH" not in content and content


# --------------------------------------------------------------------------------------------------------------------
# Diffs that OpenEvolve applies


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_diffs_apply_to_the_current_program(server, configs, framework):
    """Through HTTP, prompts built by OpenEvolve's PromptSampler, for the seed and for mutated parents
    (top programs and inspirations in the prompt are other variants: only the current one is edited)."""
    variants = chain(framework, 12, seed=11)
    parents = [FRAMEWORKS[framework].seed_source()] + variants[3::3]
    for i, parent in enumerate(parents):
        others = [v for v in variants if v != parent][:4]
        reply = chat(server.url, openevolve_messages(configs[framework], parent, others))
        content = reply["choices"][0]["message"]["content"]
        first_line = content.splitlines()[0]
        assert first_line.startswith(f"[{framework}]"), first_line  # the one-line explanation
        check_child(framework, parent, content)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_random_walks_stay_applicable_and_policy_clean(framework):
    code, rng = FRAMEWORKS[framework].seed_source(), random.Random(3)
    for n in range(60):
        proposal = mutations.propose(code, rng, n)
        code = check_child(framework, code, proposal.text)
        assert code == proposal.child


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_mutations_are_diverse_and_deterministic(configs, framework):
    messages = openevolve_messages(configs[framework], FRAMEWORKS[framework].seed_source())

    def draws(seed: int) -> list[tuple[str, str, str]]:
        p = Proposer(seed=seed)
        out = []
        for _ in range(100):
            proposal, _n = p.answer(messages)
            out.append((proposal.mutation, json.dumps(proposal.params, sort_keys=True), proposal.text))
        return out

    first, again, other = draws(0), draws(0), draws(1)
    assert first == again, "the same seed must give the same proposals"
    assert first != other
    names = {m for m, _, _ in first}
    distinct = {(m, p) for m, p, _ in first}
    families = {m.split(".")[0] for m in names}
    print(f"{framework}: {len(names)} mutation names, {len(distinct)} distinct mutations in 100 draws: {sorted(names)}")
    assert len(names) >= 6 and len(distinct) >= 20
    assert {"knob", "combo", "numeric"} <= families
    # Every knob of the catalogue that is relevant on the seed is drawn.
    seed_config = mutations.Program(FRAMEWORKS[framework].seed_source()).config
    relevant = {k.name for k in CATALOGUE[framework]["knobs"] if k.relevant(seed_config)}
    assert relevant <= {m.split(".", 1)[1] for m in names if m.startswith("knob.")}


def test_knob_values_come_from_the_program_asserts():
    seed = FRAMEWORKS["cd"].seed_source()
    narrowed = seed.replace('assert readout in ("exp", "identity", "softplus", "elu1", "relu2")',
                            'assert readout in ("exp", "elu1")')
    prog = mutations.Program(narrowed)
    assert prog.asserted[("readout",)] == [("exp",), ("elu1",)]
    assert prog.asserted[("transition",)][0] == ("identity",)
    ttr = mutations.Program(FRAMEWORKS["ttr"].seed_source())
    assert ttr.asserted[("function_class", "solver")] == [("constant", "closed_form"), ("linear", "no_covariance")]
    readouts = set()
    for n in range(300):
        p = mutations.propose(narrowed, random.Random(n), n)
        if "readout" in p.mutation:
            readouts.add(re.search(r'readout: str = "(\w+)"', p.child).group(1))
    assert readouts == {"elu1"}


# --------------------------------------------------------------------------------------------------------------------
# Fallbacks for blocks the catalogue does not know


def test_fallbacks_for_rewritten_blocks():
    seed = FRAMEWORKS["ttr"].seed_source()
    with_literals = adversarial.with_block(adversarial.LONG_CONVOLUTION)  # no knobs, some float literals
    p = mutations.propose(with_literals, random.Random(0), 1)
    assert p.mutation == "literal"
    check_child("ttr", with_literals, p.text)
    bare = adversarial.with_block(adversarial.block())  # no knobs and no float literal outside defaults
    p = mutations.propose(bare, random.Random(0), 2)
    assert p.mutation == "note"
    child = check_child("ttr", bare, p.text)
    assert program.split(child).block != program.split(bare).block
    assert mutations.propose("no markers, no class", random.Random(0), 3).mutation in ("note", "none")
    # A program with two blocks of identical lines still gets a unique SEARCH text.
    twice = seed.replace("        self.attn_drop = nn.Dropout(dropout)\n",
                         "        self.attn_drop = nn.Dropout(dropout)\n        self.attn_drop = nn.Dropout(dropout)\n")
    for n in range(20):
        proposal = mutations.propose(twice, random.Random(n), n)
        assert apply_diff(twice, proposal.text) == proposal.child


# --------------------------------------------------------------------------------------------------------------------
# Adversarial proposals


def _linear_calls(node: ast.AST) -> int:
    return sum(isinstance(n, ast.Call) and ast.unparse(n.func) == "nn.Linear" for n in ast.walk(node))


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
@pytest.mark.parametrize("kind", ADVERSARIAL_KINDS)
def test_adversarial_proposals_apply_and_break_their_rule(framework, kind):
    from harness.sandbox.checks import GateFailure, run_gate
    from harness.trusted.profiles import get_profile
    from harness.sandbox.loader import load_attention

    seed = FRAMEWORKS[framework].seed_source()
    parents = [seed, chain(framework, 4, seed=5)[-1]]
    for variant, parent in enumerate(parents):
        p = mutations.adversarial(parent, kind, variant)
        assert p.adversarial and p.expected_reason == EXPECTED_REASON[kind]
        assert len(extract_diffs(p.text)) == 1
        child = apply_diff(parent, p.text)
        assert child == p.child != parent
        if kind == "frozen":
            with pytest.raises(program.FrozenRegionError):
                program.splice(seed, child)
            continue
        spliced = program.splice(seed, child)
        tree = ast.parse(program.split(spliced).block)
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
        forward = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
        if kind == "leak":
            assert ".tril()" not in ast.unparse(forward)  # the causal mask is gone
            expected = "causality"
        else:
            init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            parent_tree = ast.parse(program.split(parent).block)
            parent_init = next(n for n in ast.walk(parent_tree) if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            assert _linear_calls(init) == _linear_calls(parent_init) + 1  # one extra nn.Linear(d_model, d_model)
            assert "self.w_extra(" in ast.unparse(forward)
            expected = "param_parity"
        if variant == 0:  # and the gate gives exactly the expected reason
            candidate = load_attention(spliced, "candidate.py")
            with pytest.raises(GateFailure) as failure:
                run_gate(candidate, load_attention(seed, "seed.py"), get_profile("smoke"), "cpu")
            assert failure.value.reason.value == expected


def test_adversarial_schedule_log_and_resumed_numbering(tmp_path, configs):
    log = tmp_path / "proposals.jsonl"
    messages = openevolve_messages(configs["cd"], FRAMEWORKS["cd"].seed_source())
    p = Proposer(seed=0, adversarial_every=3, log_path=log)
    answers = [p.answer(messages) for _ in range(9)]
    kinds = [(n, a.kind) for a, n in answers if a.adversarial]
    assert kinds == [(3, "leak"), (6, "frozen"), (9, "params")]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["request"] for e in entries] == list(range(1, 10))
    for e in entries:
        assert {"request", "framework", "mutation", "params", "adversarial", "expected_reason", "child_sha256"} <= set(e)
        assert e["framework"] == "cd"
    assert [e["expected_reason"] for e in entries if e["adversarial"]] == ["causality", "frozen_region", "param_parity"]
    seed_hash = program.sha256(FRAMEWORKS["cd"].seed_source())
    assert all(e["parent_sha256"] == seed_hash for e in entries)
    for (a, _), e in zip(answers, entries):
        assert e["child_sha256"] == program.sha256(a.child)
    # A proposer on the same log (a resumed demo) continues the numbering and the cycle.
    resumed = Proposer(seed=0, adversarial_every=3, log_path=log)
    more = [resumed.answer(messages) for _ in range(3)]
    assert [n for _, n in more] == [10, 11, 12] and more[-1][0].kind == "leak"


@pytest.mark.parametrize("kind", ADVERSARIAL_KINDS)
def test_rejected_parents_are_repaired(configs, kind):
    seed = FRAMEWORKS["mm"].seed_source()
    bad = mutations.adversarial(seed, kind).child
    artifacts = {"reason": EXPECTED_REASON[kind], "message": "rejected", "hint": "fix it"}
    p = Proposer(seed=0)
    proposal, _ = p.answer(openevolve_messages(configs["mm"], bad, artifacts=artifacts))
    assert proposal.mutation.startswith("repair") and proposal.params["parent_reason"] == EXPECTED_REASON[kind]
    child = check_child("mm", bad, proposal.text)
    assert "w_extra" not in child and ".tril()" in child


def test_cli_proposer_prints_its_url_first(tmp_path):
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "proposer", "--port", "0", "--seed", "3",
                             "--adversarial-every", "2", "--log", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        messages = [{"role": "user", "content": f"# Current Program\n```python\n{FRAMEWORKS['ttr'].seed_source()}\n```\n"}]
        for _ in range(2):
            reply = chat(url, messages)
        assert "ADVERSARIAL leak" in reply["choices"][0]["message"]["content"]
        deadline = time.time() + 10
        while time.time() < deadline and len(log.read_text().splitlines()) < 2:
            time.sleep(0.1)
        assert [json.loads(l)["adversarial"] for l in log.read_text().splitlines()] == [False, True]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------------------------
# Random proposals through the real (in-process) gate


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_random_proposals_usually_pass_the_gate(framework):
    """An evolving pool: each draw mutates a random program that already passed (the seed first), as
    OpenEvolve would; the child goes through the dynamic gate against the pristine seed."""
    from harness.sandbox.checks import GateFailure, run_gate
    from harness.trusted.profiles import get_profile
    from harness.sandbox.loader import load_attention

    profile = get_profile("smoke")
    seed = FRAMEWORKS[framework].seed_source()
    seed_cls = load_attention(seed, "seed.py")
    pool, rng, verdicts, cache, failures = [seed], random.Random(2024), [], {}, []
    started = time.time()
    for n in range(1, GATE_DRAWS + 1):
        parent = rng.choice(pool)
        proposal = mutations.propose(parent, random.Random(n), n)
        child = program.splice(seed, proposal.child)
        if child not in cache:
            try:
                run_gate(load_attention(child, "candidate.py"), seed_cls, profile, "cpu")
                cache[child] = "ok"
            except GateFailure as exc:
                cache[child] = exc.reason.value
                failures.append((proposal.mutation, proposal.params, exc.reason.value, exc.message[:200]))
        verdicts.append(cache[child])
        if cache[child] == "ok":
            pool.append(child)
    rate = verdicts.count("ok") / len(verdicts)
    print(f"\n{framework}: {rate:.0%} of {len(verdicts)} random proposals pass the gate "
          f"({len(cache)} distinct children, {time.time() - started:.0f} s); failures: {failures}")
    assert rate >= GATE_MIN_PASS_RATE, failures


@pytest.mark.parametrize("case", ["syntax_error_in_block", "empty_block", "no_init", "crlf", "no_markers",
                                  "markers_swapped", "knob_not_a_literal"])
def test_odd_programs_still_get_an_applicable_diff(case):
    seed = FRAMEWORKS["cd"].seed_source()
    parts = program.split(seed)
    odd = {
        "syntax_error_in_block": seed.replace("def forward(self, x):", "def forward(self, x)"),
        "empty_block": parts.head + "\n" + parts.tail,
        "no_init": parts.head + "class CoefficientDynamicsAttention(nn.Module):\n    scale = 0.5\n" + parts.tail,
        "crlf": seed.replace("\n", "\r\n"),
        "no_markers": seed.replace(program.START + "\n", "").replace(program.END + "\n", ""),
        "markers_swapped": seed.replace(program.START, "#TMP").replace(program.END, program.START).replace("#TMP", program.END),
        "knob_not_a_literal": seed.replace('readout: str = "exp"', 'readout: str = "e" + "xp"'),
    }[case]
    for n in range(15):
        proposal = mutations.propose(odd, random.Random(n), n)
        assert len(extract_diffs(proposal.text)) == 1, proposal.text
        child = apply_diff(odd, proposal.text)
        assert child == proposal.child and child != odd


@pytest.mark.parametrize("kind", ADVERSARIAL_KINDS)
@pytest.mark.parametrize("parent_kind", ADVERSARIAL_KINDS)
def test_adversarial_on_a_rejected_parent_breaks_only_its_own_rule(kind, parent_kind):
    """OpenEvolve may pick a rejected program as the parent: the adversarial child must still get
    exactly its own reason (e.g. params on a frozen-region parent must not be rejected as frozen_region)."""
    seed = FRAMEWORKS["ttr"].seed_source()
    parent = mutations.adversarial(seed, parent_kind, 1).child
    p = mutations.adversarial(parent, kind, 0)
    child = apply_diff(parent, p.text)
    assert child == p.child
    if kind == "frozen":
        with pytest.raises(program.FrozenRegionError):
            program.splice(seed, child)
        return
    block = program.split(program.splice(seed, child)).block  # the outside is pristine again
    assert ("self.w_extra" in block) == (kind == "params")
    leaks = ".tril()" not in block or ".flip(1)" in block  # mask dropped, or the time-reversed input added
    assert leaks == (kind == "leak")
    from harness.sandbox.checks import GateFailure, run_gate
    from harness.trusted.profiles import get_profile
    from harness.sandbox.loader import load_attention

    with pytest.raises(GateFailure) as failure:
        run_gate(load_attention(program.splice(seed, child), "candidate.py"), load_attention(seed, "seed.py"),
                 get_profile("smoke"), "cpu")
    assert failure.value.reason.value == EXPECTED_REASON[kind]

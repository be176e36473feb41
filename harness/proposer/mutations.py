"""Mutations of an attention program, each answered as ONE SEARCH/REPLACE diff that OpenEvolve applies cleanly.

The current program is read from the prompt (the ``# Current Program`` section of OpenEvolve's
``diff_user`` template) and its framework identified from the attention class name. A proposal is a
one-line explanation and one diff: one structured mutation drawn with a seeded RNG from the
framework's catalogue (a constructor knob changed to another value the program supports, two knobs at
once, or a numeric parameter inside the block perturbed within a sensible range). An adversarial
proposal is one the evaluator must reject with a known reason code (``leak`` -> causality, ``frozen``
-> frozen_region, ``params`` -> param_parity). A parent that carries one of the proposer's own
adversarial edits is repaired first, in the same diff.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
from dataclasses import dataclass

from harness.proposer.catalogue import (ADVERSARIAL_KINDS, CATALOGUE, EXPECTED_REASON, FAMILY_WEIGHTS, INIT_STD,
                                        Knob)
from harness.trusted.frameworks import CLASS_TO_FRAMEWORK, FRAMEWORKS, framework_of
from harness.trusted.program import END, START


# --------------------------------------------------------------------------------------------------------------------
# Reading the request


def extract_program(text: str) -> str | None:
    """The current program embedded in an OpenEvolve user message: the fenced block under the last
    ``# Current Program`` heading (diff_user and full_rewrite_user templates), else the last fenced block
    that contains an EVOLVE-BLOCK marker or a known attention class."""
    matches = list(re.finditer(r"^# Current Program[^\n]*\n+```[^\n]*\n(.*?)\n```[ \t]*$", text, re.M | re.S))
    if matches:
        return matches[-1].group(1)
    blocks = re.findall(r"^```[^\n]*\n(.*?)\n```[ \t]*$", text, re.M | re.S)
    for block in reversed(blocks):
        if START in block or any(name in block for name in CLASS_TO_FRAMEWORK):
            return block
    return None


def identify_framework(program: str) -> str | None:
    if framework_of(program):
        return framework_of(program)
    m = re.search(r"^ATTENTION\s*=\s*(\w+)", program, re.M)
    return CLASS_TO_FRAMEWORK.get(m.group(1)) if m else None



# --------------------------------------------------------------------------------------------------------------------
# Programs as lines, edits, diffs


def _fmt(value: float) -> str:
    """A float literal, short and always a float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        mantissa, exp = f"{value:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        return f"{mantissa}e{int(exp)}"
    text = f"{value:.3g}"
    if "e" in text:
        text = repr(float(text))
    return text if ("." in text or "e" in text) else text + ".0"


@dataclass
class Edit:
    start: int  # first program line replaced (0-based)
    end: int  # one past the last line replaced (start == end: pure insertion before start)
    new: list[str]


class Program:
    """The current program split the way OpenEvolve's apply_diff splits it (on '\\n')."""

    def __init__(self, code: str, framework: str | None = None):
        self.code = code
        self.lines = code.split("\n")
        starts = [i for i, line in enumerate(self.lines) if line.strip() == START]
        ends = [i for i, line in enumerate(self.lines) if line.strip() == END]
        if starts and ends and starts[0] < ends[0]:
            self.start, self.end = starts[0], ends[0]
        else:  # no usable markers: treat the whole text as the block
            self.start, self.end = -1, len(self.lines)
        self.has_markers = self.start >= 0
        self.framework = framework or identify_framework(code)
        self.block = "\n".join(self.lines[self.start + 1:self.end])
        try:
            self.tree = ast.parse(self.block)
        except SyntaxError:
            self.tree = None
        self.cls = self._find_class()
        self.init = self._method("__init__")
        self.forward = self._method("forward")
        self.config, self.default_nodes = self._defaults()
        self.asserted = self._asserted_values()

    # -- structure ---------------------------------------------------------------------------------------------
    def line_of(self, node: ast.AST) -> int:
        """Program line index of an AST node of the block."""
        return self.start + node.lineno

    def end_line_of(self, node: ast.AST) -> int:
        return self.start + node.end_lineno

    def _find_class(self):
        if self.tree is None:
            return None
        classes = [n for n in self.tree.body if isinstance(n, ast.ClassDef)]
        wanted = FRAMEWORKS[self.framework].class_name if self.framework in FRAMEWORKS else None
        m = re.search(r"^ATTENTION\s*=\s*(\w+)", self.code, re.M)
        for name in (wanted, m.group(1) if m else None):
            for c in classes:
                if c.name == name:
                    return c
        for c in classes:
            if any(isinstance(f, ast.FunctionDef) and f.name == "forward" for f in c.body):
                return c
        return classes[0] if classes else None

    def _method(self, name: str):
        if self.cls is None:
            return None
        for f in self.cls.body:
            if isinstance(f, ast.FunctionDef) and f.name == name:
                return f
        return None

    def _defaults(self):
        config, nodes = {}, {}
        if self.init is None:
            return config, nodes
        a = self.init.args
        pairs = list(zip(a.args[len(a.args) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
        for arg, default in pairs:
            if isinstance(default, ast.Constant) and isinstance(default.value, (str, int, float)) \
                    and not isinstance(default.value, bool) and default.lineno == default.end_lineno:
                config[arg.arg], nodes[arg.arg] = default.value, default
        return config, nodes

    def _asserted_values(self) -> dict[tuple, list[tuple]]:
        """``assert kw in (...)`` and ``assert (a, b) in ((..), ..)`` inside __init__."""
        out = {}
        if self.init is None:
            return out
        for node in ast.walk(self.init):
            if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
                    and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.In)):
                continue
            left, right = node.test.left, node.test.comparators[0]
            if isinstance(left, ast.Name):
                keys = (left.id,)
            elif isinstance(left, ast.Tuple) and all(isinstance(e, ast.Name) for e in left.elts):
                keys = tuple(e.id for e in left.elts)
            else:
                continue
            if not isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                continue
            try:
                values = ast.literal_eval(right)
            except Exception:  # noqa: BLE001 - not a literal: no values to read
                continue
            rows = []
            for v in values:
                row = v if isinstance(v, tuple) else (v,)
                if len(row) == len(keys):
                    rows.append(row)
            if rows:
                out[keys] = rows
        return out

    # -- edits -------------------------------------------------------------------------------------------------
    def apply(self, edits: list[Edit]) -> str:
        lines = list(self.lines)
        for e in sorted(edits, key=lambda e: e.start, reverse=True):
            lines[e.start:e.end] = e.new
        return "\n".join(lines)

    def _first_match(self, search: list[str]) -> tuple[int, int]:
        """(index of the first exact match, number of matches ignoring trailing whitespace)."""
        n, size = len(self.lines), len(search)
        first, count = -1, 0
        stripped = [s.rstrip() for s in search]
        for i in range(n - size + 1):
            if first < 0 and self.lines[i:i + size] == search:
                first = i
            if [s.rstrip() for s in self.lines[i:i + size]] == stripped:
                count += 1
        return first, count

    def diff(self, edits: list[Edit]) -> tuple[str, str]:
        """One SEARCH/REPLACE pair covering all the edits: whole lines, unique in the program."""
        lo, hi = min(e.start for e in edits), max(e.end for e in edits)
        child = self.apply(edits).split("\n")
        delta = len(child) - len(self.lines)
        n = len(self.lines)
        if lo == hi:  # a pure insertion: anchor it on the line before (or after)
            lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
        # Grow the context until the SEARCH text starts and ends on real text and occurs exactly once.
        while True:
            search, replace = self.lines[lo:hi], child[lo:hi + delta]
            first, count = self._first_match(search)
            # OpenEvolve rstrips both texts: each must end on a non-blank line (so a deletion needs context).
            if search[0].strip() and search[-1].strip() and first == lo and count == 1 \
                    and replace and replace[-1].strip():
                break
            if (not search[-1].strip() or not replace or not replace[-1].strip()) and hi < n:
                hi += 1
            elif not search[0].strip() and lo > 0:
                lo -= 1
            elif hi < n:
                hi += 1
            elif lo > 0:
                lo -= 1
            else:
                break
        replace = child[lo:hi + delta]
        return "\n".join(self.lines[lo:hi]), "\n".join(replace)


def render(explanation: str, search: str, replace: str) -> str:
    return f"{explanation}\n\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


_DIFF_RE = re.compile(r"<<<<<<< SEARCH\n(.*?)=======\n(.*?)>>>>>>> REPLACE", re.S)
_DELIM_RE = re.compile(r"^[ \t]*(<<<<<<< SEARCH|=======|>>>>>>> REPLACE)[ \t]*\r?$", re.M)


def simulate_openevolve(parent: str, response: str) -> str | None:
    """What OpenEvolve 0.4.0 makes of the response (extract_diffs + apply_diff_blocks, re-implemented
    here with the standard library): the child, or None where it would fail the iteration."""
    matches = list(_DIFF_RE.finditer(response))
    if not matches:
        return None
    cursor = 0
    for m in matches:
        if _DELIM_RE.search(response[cursor:m.start()]):
            return None
        if [d.group(1) for d in _DELIM_RE.finditer(m.group(0))] != ["<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"]:
            return None
        cursor = m.end()
    if _DELIM_RE.search(response[cursor:]):
        return None
    lines, applied = parent.split("\n"), 0
    for m in matches:
        search, replace = m.group(1).rstrip().split("\n"), m.group(2).rstrip().split("\n")
        size, at = len(search), -1
        for i in range(len(lines) - size + 1):
            if lines[i:i + size] == search:
                at = i
                break
        if at < 0:
            stripped = [s.rstrip() for s in search]
            for i in range(len(lines) - size + 1):
                if [s.rstrip() for s in lines[i:i + size]] == stripped:
                    at = i
                    break
        if at >= 0:
            lines[at:at + size] = replace
            applied += 1
    child = "\n".join(lines)
    return child if applied and child != parent else None


# --------------------------------------------------------------------------------------------------------------------
# Mutations


@dataclass
class Proposal:
    framework: str | None
    mutation: str
    params: dict
    explanation: str
    search: str = ""
    replace: str = ""
    adversarial: bool = False
    kind: str | None = None
    expected_reason: str | None = None
    child: str | None = None  # the program OpenEvolve will build from the response

    @property
    def text(self) -> str:
        if not self.search and not self.replace:
            return self.explanation
        return render(self.explanation, self.search, self.replace)


class NoMutation(Exception):
    pass


def _replace_span(line: str, col: int, end_col: int, text: str) -> str:
    raw = line.encode()
    return (raw[:col] + text.encode() + raw[end_col:]).decode()


def _knob_values(prog: Program, knob: Knob) -> list[tuple]:
    """The values the current program asserts for the knob, else the catalogue's."""
    if knob.keywords in prog.asserted:
        return [tuple(v) for v in prog.asserted[knob.keywords]]
    return list(knob.values)


def _applicable_knobs(prog: Program, knobs, config: dict) -> list[tuple[Knob, tuple, list[tuple]]]:
    """(knob, current value, alternatives) for each knob present as a literal default and relevant."""
    out = []
    for knob in knobs:
        if not all(k in config for k in knob.keywords):
            continue
        current = tuple(config[k] for k in knob.keywords)
        if not all(type(c) is type(v) for c, v in zip(current, knob.values[0])):
            continue
        alternatives = [v for v in _knob_values(prog, knob) if tuple(v) != current]
        if alternatives and knob.relevant(config):
            out.append((knob, current, alternatives))
    return out


def _knob_edits(prog: Program, changes: dict) -> list[Edit]:
    by_line: dict[int, list] = {}
    for kw, value in changes.items():
        node = prog.default_nodes[kw]
        by_line.setdefault(prog.line_of(node), []).append((node, value))
    edits = []
    for line_no, items in by_line.items():
        line = prog.lines[line_no]
        for node, value in sorted(items, key=lambda it: it[0].col_offset, reverse=True):
            literal = json.dumps(value) if isinstance(value, str) else _fmt(value)
            line = _replace_span(line, node.col_offset, node.end_col_offset, literal)
        edits.append(Edit(line_no, line_no + 1, [line]))
    return edits


def _describe(knob: Knob, old: tuple, new: tuple) -> str:
    show = (lambda t: "/".join(map(str, t)))
    why = knob.why.get(tuple(new), "")
    return f"{knob.axis}: {knob.name} {show(old)} -> {show(new)}" + (f" ({why})" if why else "")


def mutate_knob(prog: Program, rng: random.Random, cat: dict) -> Proposal:
    options = _applicable_knobs(prog, cat["knobs"], prog.config)
    if not options:
        raise NoMutation
    knob, current, alternatives = rng.choice(options)
    new = tuple(rng.choice(alternatives))
    changes = dict(zip(knob.keywords, new))
    params = {"knob": knob.name, "from": list(current), "to": list(new)}
    explanation = f"[{prog.framework}] {_describe(knob, current, new)}."
    return _finish(prog, _knob_edits(prog, changes), Proposal(prog.framework, f"knob.{knob.name}", params, explanation))


def mutate_combo(prog: Program, rng: random.Random, cat: dict) -> Proposal:
    first = _applicable_knobs(prog, cat["knobs"], prog.config)
    if len(first) < 1:
        raise NoMutation
    rng.shuffle(first)
    for knob_a, current_a, alternatives_a in first:
        new_a = tuple(rng.choice(alternatives_a))
        config = {**prog.config, **dict(zip(knob_a.keywords, new_a))}
        second = [o for o in _applicable_knobs(prog, cat["knobs"], config)
                  if not set(o[0].keywords) & set(knob_a.keywords)]
        if not second:
            continue
        knob_b, current_b, alternatives_b = rng.choice(second)
        new_b = tuple(rng.choice(alternatives_b))
        if not knob_a.relevant({**config, **dict(zip(knob_b.keywords, new_b))}):
            continue  # the second change would make the first one moot
        changes = {**dict(zip(knob_a.keywords, new_a)), **dict(zip(knob_b.keywords, new_b))}
        order = [k.name for k in cat["knobs"]]
        if order.index(knob_b.name) < order.index(knob_a.name):  # one name per pair, in catalogue order
            (knob_a, current_a, new_a), (knob_b, current_b, new_b) = (knob_b, current_b, new_b), (knob_a, current_a, new_a)
        name = f"combo.{knob_a.name}+{knob_b.name}"
        params = {"knobs": [knob_a.name, knob_b.name], "from": [list(current_a), list(current_b)],
                  "to": [list(new_a), list(new_b)]}
        explanation = f"[{prog.framework}] combination: {_describe(knob_a, current_a, new_a)}; " \
                      f"{_describe(knob_b, current_b, new_b)}."
        return _finish(prog, _knob_edits(prog, changes), Proposal(prog.framework, name, params, explanation))
    raise NoMutation


def _block_lines(prog: Program) -> range:
    return range(prog.start + 1, prog.end)


def mutate_init(prog: Program, rng: random.Random, cat: dict) -> Proposal:
    """The projections' initialisation scale (shared by the three seeds)."""
    return mutate_numeric(prog, rng, {"numeric": (INIT_STD,)})


def mutate_numeric(prog: Program, rng: random.Random, cat: dict) -> Proposal:
    sites = []
    for site in cat["numeric"]:
        if site is INIT_STD and len(cat["numeric"]) > 1:
            continue
        if prog.config and not site.relevant(prog.config):
            continue
        for i in _block_lines(prog):
            m = re.search(site.pattern, prog.lines[i])
            if m:
                sites.append((site, i, m))
                break
    if not sites:
        raise NoMutation
    rng.shuffle(sites)
    for site, i, m in sites:
        old = {g: float(m.group(g)) for g in m.groupdict()}
        for _ in range(8):
            new = site.draw(rng, old)
            texts = {g: _fmt(v) for g, v in new.items()}
            if any(texts[g] != m.group(g) for g in texts):
                break
        else:
            continue
        line = prog.lines[i]
        for g in sorted(texts, key=lambda g: m.start(g), reverse=True):
            line = line[:m.start(g)] + texts[g] + line[m.end(g):]
        params = {"site": site.name, "from": {g: m.group(g) for g in texts}, "to": texts}
        change = ", ".join(f"{m.group(g)} -> {texts[g]}" for g in sorted(texts))
        explanation = f"[{prog.framework}] {site.axis}: {change}."
        return _finish(prog, [Edit(i, i + 1, [line])], Proposal(prog.framework, f"numeric.{site.name}", params,
                                                               explanation))
    raise NoMutation


def mutate_literal(prog: Program, rng: random.Random) -> Proposal:
    """Fallback for blocks without recognisable knobs: perturb one float literal of the block by a
    factor in [1/2, 2] (never inside an assert, never a zero)."""
    if prog.tree is None:
        raise NoMutation
    in_assert = set()  # literals inside asserts and argument defaults (dropout=0.1, ...) are left alone
    for node in ast.walk(prog.tree):
        if isinstance(node, ast.Assert):
            in_assert |= {id(n) for n in ast.walk(node)}
        elif isinstance(node, ast.arguments):
            in_assert |= {id(n) for d in node.defaults + [k for k in node.kw_defaults if k] for n in ast.walk(d)}
    literals = [n for n in ast.walk(prog.tree)
                if isinstance(n, ast.Constant) and type(n.value) is float and n.value != 0.0
                and math.isfinite(n.value) and id(n) not in in_assert and n.lineno == n.end_lineno]
    if not literals:
        raise NoMutation
    node = rng.choice(sorted(literals, key=lambda n: (n.lineno, n.col_offset)))
    old = node.value
    for _ in range(8):
        new = old * math.exp(rng.uniform(-math.log(2.0), math.log(2.0)))
        if _fmt(new) != _fmt(old):
            break
    i = prog.line_of(node)
    line = _replace_span(prog.lines[i], node.col_offset, node.end_col_offset, _fmt(new))
    params = {"line": i + 1, "from": repr(old), "to": _fmt(new)}
    explanation = f"[{prog.framework or 'unknown'}] numeric literal on line {i + 1}: {old!r} -> {_fmt(new)}."
    return _finish(prog, [Edit(i, i + 1, [line])], Proposal(prog.framework, "literal", params, explanation))


def mutate_note(prog: Program, rng: random.Random, request_no: int) -> Proposal:
    """Last resort: a harmless, real change (a comment line at the top of the block)."""
    anchor = prog.start if prog.has_markers else 0
    note = f"# proposer note (request {request_no}): no structured mutation applied to this block"
    lines = [prog.lines[anchor], note] if prog.has_markers else [note, prog.lines[anchor]]
    return _finish(prog, [Edit(anchor, anchor + 1, lines)],
                   Proposal(prog.framework, "note", {}, f"[{prog.framework or 'unknown'}] no knob or numeric "
                            "literal recognised in the block; adding a harmless comment."))


def _finish(prog: Program, edits: list[Edit], proposal: Proposal) -> Proposal:
    search, replace = prog.diff(edits)
    proposal.search, proposal.replace = search, replace
    child = simulate_openevolve(prog.code, proposal.text)
    if child is None or child != prog.apply(edits):
        raise NoMutation
    proposal.child = child
    return proposal


def parent_reason(prompt: str) -> str | None:
    """The reason code of the parent's evaluation, from the artifacts OpenEvolve puts in the prompt."""
    m = re.search(r"^### reason\s*\n```[^\n]*\n\s*([a-z_]+)\s*\n```", prompt, re.M)
    return m.group(1) if m else None


def repaired(prog: Program) -> str:
    """The program with the proposer's own adversarial edits undone and the frozen outside restored
    from the pristine seed: what a model reading the rejection would do."""
    text = "\n".join(l for l in prog.lines if not ("self.w_extra = " in l and l.rstrip().endswith("# extra parameters")))
    text = re.sub(r"^(\s*)_adversarial_out = (.*?)\n[ \t]*return _adversarial_out \+ [^\n]*$", r"\1return \2", text,
                  flags=re.M | re.S)
    text = re.sub(r"^(\s*mask = torch\.ones\(T, T, dtype=torch\.bool, device=x\.device\))[ \t]*$", r"\1.tril()", text,
                  flags=re.M)
    if prog.framework in FRAMEWORKS:
        from harness.trusted import program as program_text

        try:
            seed = program_text.split(FRAMEWORKS[prog.framework].seed_source())
            text = seed.head + program_text.split(text).block + seed.tail
        except program_text.FrozenRegionError:
            pass
    return text


def _edit_between(old: list[str], new: list[str]) -> Edit:
    """One edit turning old into new: everything between their common prefix and common suffix."""
    i = 0
    while i < min(len(old), len(new)) and old[i] == new[i]:
        i += 1
    j = 0
    while j < min(len(old), len(new)) - i and old[-1 - j] == new[-1 - j]:
        j += 1
    return Edit(i, len(old) - j, new[i:len(new) - j])


def mutate_repair(prog: Program, rng: random.Random, request_no: int, reason: str | None) -> Proposal:
    """Undo the proposer's own adversarial edits (what a model reading the rejection would do) and,
    in the same diff, apply a fresh structured mutation to the repaired program."""
    target = repaired(prog)
    if target == prog.code:
        raise NoMutation
    then = _structured(Program(target, prog.framework), rng, request_no)
    if then is not None:
        target = then.child
    explanation = (f"[{prog.framework or 'unknown'}] repair: the parent was rejected"
                   + (f" ({reason})" if reason else "") + "; undo the edit that broke the rules (frozen text, "
                   "causal mask, extra parameters)" + (f"; then {then.explanation.split('] ', 1)[-1]}" if then else "."))
    params = {"parent_reason": reason, "then": then.mutation if then else None, "then_params": then.params if then else None}
    name = "repair" + (f"+{then.mutation}" if then else "")
    return _finish(prog, [_edit_between(prog.lines, target.split("\n"))], Proposal(prog.framework, name, params,
                                                                                   explanation))


def _structured(prog: Program, rng: random.Random, request_no: int) -> Proposal | None:
    cat = CATALOGUE.get(prog.framework)
    families = []
    if cat:
        families = [("knob", mutate_knob), ("combo", mutate_combo), ("numeric", mutate_numeric),
                    ("init", mutate_init)]
    while families:
        weights = [FAMILY_WEIGHTS[name] for name, _ in families]
        name, fn = rng.choices(families, weights=weights)[0]
        try:
            return fn(prog, rng, cat)
        except NoMutation:
            families = [f for f in families if f[0] != name]
    for fallback in (lambda: mutate_literal(prog, rng), lambda: mutate_note(prog, rng, request_no)):
        try:
            return fallback()
        except NoMutation:
            continue
    return None


def propose(program: str, rng: random.Random, request_no: int = 0, reason: str | None = None) -> Proposal:
    """One structured mutation of the program, drawn with rng: a knob (or two) changed to another
    supported value, or a numeric parameter perturbed; a literal perturbation or a comment where the
    block has no recognisable knob. A program carrying one of the proposer's own adversarial edits is
    repaired first, in the same diff."""
    prog = Program(program)
    try:
        return mutate_repair(prog, rng, request_no, reason)
    except NoMutation:
        pass
    proposal = _structured(prog, rng, request_no)
    if proposal is None:
        return Proposal(prog.framework, "none", {}, "No program found in the request; no change proposed.")
    return proposal


# --------------------------------------------------------------------------------------------------------------------
# Adversarial proposals


def _return_rewrite(prog: Program, func: ast.FunctionDef, suffix: str) -> list[Edit]:
    """Rewrite the last return of func so that it returns (its value) + suffix."""
    returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value is not None]
    if not returns:
        raise NoMutation
    ret = max(returns, key=lambda n: n.lineno)
    first, last = prog.line_of(ret), prog.end_line_of(ret)
    lines = prog.lines[first:last + 1]
    head = lines[0]
    indent = head[:len(head) - len(head.lstrip())]
    col = ret.col_offset
    if not head.encode()[col:].startswith(b"return "):
        raise NoMutation
    lines[0] = _replace_span(head, col, col + len("return "), "_adversarial_out = ")
    lines.append(f"{indent}return _adversarial_out + {suffix}")
    return [Edit(first, last + 1, lines)]


def adversarial(program: str, kind: str, variant: int = 0) -> Proposal:
    """A proposal the evaluator must reject with EXPECTED_REASON[kind]. OpenEvolve may hand over a
    parent that was itself rejected (it stays in the database with score 0): such a parent is repaired
    first, in the same diff, so that the child breaks exactly one rule, the intended one."""
    prog = Program(program)
    target = repaired(prog)
    if target == program:
        return _adversarial(prog, kind, variant)
    inner = _adversarial(Program(target, prog.framework), kind, variant)
    if inner.child == program:  # the parent already broke this very rule the same way: break it another way
        inner = _adversarial(Program(target, prog.framework), kind, variant + 1, alternative=True)
    inner.params["repaired_parent"] = True
    inner.explanation += " (The parent's earlier rule break is undone first.)"
    return _finish(prog, [_edit_between(prog.lines, inner.child.split("\n"))], inner)


def _adversarial(prog: Program, kind: str, variant: int, alternative: bool = False) -> Proposal:
    fw = prog.framework
    tag = f"[{fw or 'unknown'}] ADVERSARIAL {kind} (expected reason: {EXPECTED_REASON[kind]})"
    if kind == "leak":
        forward_lines = range(prog.line_of(prog.forward), prog.end_line_of(prog.forward) + 1) if prog.forward else []
        for i in [] if alternative else list(forward_lines) + list(_block_lines(prog)):
            if re.search(r"\bmask\b.*\.tril\(\)", prog.lines[i]):
                line = prog.lines[i].replace(".tril()", "", 1)
                return _finish(prog, [Edit(i, i + 1, [line])], Proposal(
                    fw, "adversarial.leak", {"how": "mask_without_tril", "line": i + 1},
                    f"{tag}: drop .tril() from the causal mask, so every position sees the future.",
                    adversarial=True, kind=kind, expected_reason=EXPECTED_REASON[kind]))
        if prog.forward is not None and prog.forward.args.args[1:]:
            x = prog.forward.args.args[1].arg
            edits = _return_rewrite(prog, prog.forward, f"0.5 * {x}.flip(1)")
            return _finish(prog, edits, Proposal(
                fw, "adversarial.leak", {"how": "add_flipped_input"},
                f"{tag}: add the time-reversed input to the output.",
                adversarial=True, kind=kind, expected_reason=EXPECTED_REASON[kind]))
        raise NoMutation
    if kind == "frozen":
        targets = []
        m = next((i for i, line in enumerate(prog.lines) if re.match(r"^ATTENTION\s*=", line)), None)
        if variant % 2 == 0 and prog.has_markers:
            i = prog.end
            targets.append(([prog.lines[i], "F.gelu = F.relu  # swaps the frozen FFN's activation"], i,
                            "add a line after the END marker that swaps the frozen FFN's GELU for ReLU"))
        if m is not None:
            targets.append(([prog.lines[m].rstrip() + "  # rebound outside the block"], m,
                             "edit the frozen `ATTENTION = ...` line"))
        targets.append(([prog.lines[0] + " (edited)"], 0, "edit the first line of the file"))
        new, i, how = targets[0]
        return _finish(prog, [Edit(i, i + 1, new)], Proposal(
            fw, "adversarial.frozen", {"how": how, "line": i + 1}, f"{tag}: {how}.",
            adversarial=True, kind=kind, expected_reason=EXPECTED_REASON[kind]))
    if kind == "params":
        if prog.init is None or prog.forward is None or not prog.forward.args.args[1:]:
            raise NoMutation
        d = "d_model" if any(a.arg == "d_model" for a in prog.init.args.args + prog.init.args.kwonlyargs) \
            else prog.init.args.args[1].arg
        body_first = prog.init.body[0]
        indent = prog.lines[prog.line_of(body_first)][:body_first.col_offset]
        init_end = prog.end_line_of(prog.init.body[-1])
        x = prog.forward.args.args[1].arg
        extra = f"nn.Linear({d}, {d}, bias=False)" if alternative else f"nn.Linear({d}, {d})"
        edits = [Edit(init_end + 1, init_end + 1, [f"{indent}self.w_extra = {extra}  # extra parameters"])]
        edits += _return_rewrite(prog, prog.forward, f"self.w_extra({x})")
        return _finish(prog, edits, Proposal(
            fw, "adversarial.params", {"how": "extra nn.Linear(d_model, d_model) used in forward"},
            f"{tag}: add an extra nn.Linear({d}, {d}) and add its output in forward.",
            adversarial=True, kind=kind, expected_reason=EXPECTED_REASON[kind]))
    raise ValueError(f"unknown adversarial kind {kind!r}; choose one of {ADVERSARIAL_KINDS}")

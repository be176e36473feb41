"""The built-in proposer: an OpenAI-compatible chat-completions server that mutates attention programs.

    harness proposer [--host 127.0.0.1] [--port 8765] [--seed 0] [--adversarial-every N] [--log FILE]
    harness demo FRAMEWORK [--iterations 5] [--output DIR]

No model weights, no network, standard library only. Stock OpenEvolve talks to it exactly as it talks
to a hosted LLM (``--api-base http://127.0.0.1:PORT/v1 --primary-model harness-proposer``). For each
request it reads the current program from the prompt (the ``# Current Program`` section of OpenEvolve's
``diff_user`` template), identifies the framework from the attention class name, and answers with a
one-line explanation and ONE SEARCH/REPLACE diff that OpenEvolve applies cleanly: one structured
mutation drawn with a seeded RNG from the framework's catalogue (a constructor knob changed to another
value the program supports, two knobs at once, or a numeric parameter inside the block perturbed within
a sensible range). Every ``--adversarial-every`` N-th request instead gets an adversarial proposal that
the evaluator must reject with a known reason code (``leak`` -> causality, ``frozen`` ->
frozen_region, ``params`` -> param_parity), so that a run shows its rejections working end to end.

``run_demo`` drives the stock ``openevolve-run`` CLI against this server in a subprocess.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from harness.frameworks import FRAMEWORKS, REPO_ROOT

START = "# EVOLVE-BLOCK-START"
END = "# EVOLVE-BLOCK-END"
MODEL_NAME = "harness-proposer"
CLASS_TO_FRAMEWORK = {fw.class_name: fw.name for fw in FRAMEWORKS.values()}

# Adversarial kinds, in the order they cycle, with the reason code the evaluator must give.
ADVERSARIAL_KINDS = ("leak", "frozen", "params")
EXPECTED_REASON = {"leak": "causality", "frozen": "frozen_region", "params": "param_parity"}

# How often each family of mutation is drawn (renormalised over the families that apply).
FAMILY_WEIGHTS = {"knob": 0.45, "combo": 0.2, "numeric": 0.25, "init": 0.1}

# --------------------------------------------------------------------------------------------------------------------
# The catalogue: the framework axes of the three seeds


def _always(_config: dict) -> bool:
    return True


@dataclass(frozen=True)
class Knob:
    """One constructor keyword (or a joint group such as function_class + solver) and its valid values.

    ``values`` is the fallback table, read from the seed's own asserts and docstring; when the current
    program still has an ``assert kw in (...)`` for the keyword, the values listed there win (that is
    what the program in hand supports)."""

    keywords: tuple[str, ...]
    axis: str
    values: tuple[tuple, ...]
    why: dict = field(default_factory=dict)  # value tuple -> one-line motivation
    relevant: Callable[[dict], bool] = _always  # is the knob meaningful under this configuration?

    @property
    def name(self) -> str:
        return "+".join(self.keywords)


@dataclass(frozen=True)
class NumericSite:
    """A numeric literal (or a pair) inside the block, found by a single-line regex with named groups."""

    name: str
    axis: str
    pattern: str
    draw: Callable[[random.Random, dict], dict]  # (rng, old values) -> new values by group name
    relevant: Callable[[dict], bool] = _always


def _v(*values) -> tuple[tuple, ...]:
    return tuple(v if isinstance(v, tuple) else (v,) for v in values)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _draw_init_std(rng, old):
    return {"v": _log_uniform(rng, 0.005, 0.05)}


def _draw_decay_exponent(rng, old):  # a_h = 1 - 2^(e - h): e = -5 is RetNet's init
    return {"v": -rng.choice([2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 2.5, 3.5, 4.5, 5.5, 6.5])}


def _draw_dt_range(rng, old):  # Mamba-style dt init range
    return {"lo": _log_uniform(rng, 1e-4, 1e-2), "hi": _log_uniform(rng, 2e-2, 0.5)}


def _draw_rope_base(rng, old):
    return {"v": rng.choice([500.0, 1000.0, 2000.0, 5000.0, 20000.0, 50000.0, 100000.0])}


def _draw_eps(rng, old):
    return {"v": rng.choice([1e-8, 1e-7, 1e-5, 1e-4])}


def _draw_impulse_scale(rng, old):  # s_h = d_head^(c): c = -0.5 is 1/sqrt(d)
    return {"v": -rng.choice([0.25, 0.35, 0.4, 0.45, 0.55, 0.6, 0.75, 1.0])}


def _draw_gate_bias(rng, old):  # forget-gate bias range: sigmoid(b) = initial retention
    lo = rng.choice([0.5, 1.0, 1.5, 2.5, 3.0, 4.0])
    return {"lo": lo, "hi": lo + rng.choice([1.0, 2.0, 3.0, 4.0, 5.0])}


def _draw_bandwidth(rng, old):  # 1/bandwidth init = d_head^(c)
    return {"v": rng.choice([0.25, 0.35, 0.4, 0.6, 0.75, 1.0])}


def _draw_poly_coef(rng, old):  # 1 + s + c s^2 >= 0 for all s iff c >= 1/4
    return {"v": rng.choice([0.25, 0.3, 0.4, 0.6, 0.75, 1.0])}


def _draw_toeplitz_rates(rng, old):
    return {"lo": _log_uniform(rng, 1e-3, 0.1), "hi": _log_uniform(rng, 0.3, 3.0)}


def _draw_omega_divisor(rng, old):
    return {"v": rng.choice([1.0, 2.0, 3.0, 6.0, 8.0, 16.0])}


_NUM = r"[0-9][0-9.]*(?:[eE][-+]?[0-9]+)?"
INIT_STD = NumericSite("init_std", "projection init scale", rf"nn\.init\.normal_\(lin\.weight, 0\.0, (?P<v>{_NUM})\)",
                       _draw_init_std)


def _cd_decay(c):
    return c.get("transition") in ("scalar_decay", "selective_decay")


CATALOGUE: dict[str, dict] = {
    "cd": {
        "knobs": (
            Knob(("transition",), "transition structure A_t",
                 _v("identity", "scalar_decay", "selective_decay", "rotation"),
                 {("identity",): "content-only coefficients (softmax attention)",
                  ("scalar_decay",): "per-head fixed forgetting a_h^(i-j) (RetNet-like)",
                  ("selective_decay",): "input-dependent forgetting exp(-softplus(w^T x) e^A) (Mamba-2-like)",
                  ("rotation",): "a rotation transition R^(i-j), i.e. RoPE on c_i and b_j"}),
            Knob(("decay_placement",), "decay placement", _v("inside", "outside"),
                 {("inside",): "the decay multiplies the logit inside phi",
                  ("outside",): "the decay multiplies phi (a log-decay added to an exp logit)"}, _cd_decay),
            Knob(("impulse",), "input scaling b_j", _v("inv_sqrt_d", "learned", "input"),
                 {("inv_sqrt_d",): "fixed 1/sqrt(d_head) impulse scale",
                  ("learned",): "a learned per-head impulse scale",
                  ("input",): "an input-dependent impulse scale softplus(w^T x_j)"}),
            Knob(("readout",), "readout map phi", _v("exp", "identity", "softplus", "elu1", "relu2"),
                 {("exp",): "exp readout (softmax)", ("identity",): "linear readout (finite-state recurrence)",
                  ("softplus",): "softplus readout", ("elu1",): "elu+1 readout (positive linear attention)",
                  ("relu2",): "squared-ReLU readout"}),
            Knob(("normalization",), "normalisation eta", _v("sum", "none", "learned", "output_rms"),
                 {("sum",): "coefficients sum to one", ("none",): "unnormalised coefficients",
                  ("learned",): "a learned data-dependent normaliser exp(w^T x_i)",
                  ("output_rms",): "normalise the mixed output by its RMS"}),
        ),
        "numeric": (
            NumericSite("decay_init", "transition decay init", rf"torch\.pow\(2\.0, (?P<v>-{_NUM}) - torch\.arange",
                        _draw_decay_exponent, lambda c: c.get("transition") == "scalar_decay"),
            NumericSite("dt_range", "selective decay dt range",
                        rf"torch\.linspace\(math\.log\((?P<lo>{_NUM})\), math\.log\((?P<hi>{_NUM})\), H\)",
                        _draw_dt_range, lambda c: c.get("transition") == "selective_decay"),
            NumericSite("rope_base", "rotation frequency base", rf"torch\.pow\((?P<v>{_NUM}), -torch\.arange\(half",
                        _draw_rope_base, lambda c: c.get("transition") == "rotation"),
            NumericSite("impulse_scale", "learned impulse scale init",
                        rf"torch\.full\(\(H,\), (?P<v>-{_NUM}) \* math\.log\(self\.d_head\)\)",
                        _draw_impulse_scale, lambda c: c.get("impulse") == "learned"),
            NumericSite("rms_eps", "output RMS epsilon", rf"y\.pow\(2\)\.mean\(dim=-1, keepdim=True\) \+ (?P<v>{_NUM})\)",
                        _draw_eps, lambda c: c.get("normalization") == "output_rms"),
            INIT_STD,
        ),
    },
    "ttr": {
        "knobs": (
            Knob(("kernel",), "regression weights: kernel kappa", _v("exp", "rbf_qknorm", "relu2", "polynomial"),
                 {("exp",): "exponential kernel (softmax)",
                  ("rbf_qknorm",): "RBF kernel on normalised q, k with a learned bandwidth",
                  ("relu2",): "squared-ReLU kernel", ("polynomial",): "second-order Taylor kernel of exp"},
                 lambda c: c.get("function_class", "constant") == "constant"),
            Knob(("temporal",), "temporal weights tau", _v("uniform", "fixed_decay", "gated_decay"),
                 {("uniform",): "uniform temporal weights", ("fixed_decay",): "per-head fixed exponential decay",
                  ("gated_decay",): "data-dependent forget gates"}),
            Knob(("function_class", "solver"), "function class + test-time solver",
                 _v(("constant", "closed_form"), ("linear", "no_covariance")),
                 {("constant", "closed_form"): "Nadaraya-Watson (constant class) solved in closed form",
                  ("linear", "no_covariance"): "linear fast-weight class with the covariance-free solver"}),
            Knob(("feature_map",), "feature map psi", _v("elu1", "softplus"),
                 {("elu1",): "elu+1 features", ("softplus",): "softplus features"},
                 lambda c: c.get("function_class") == "linear"),
        ),
        "numeric": (
            NumericSite("decay_init", "temporal decay init", rf"torch\.pow\(2\.0, (?P<v>-{_NUM}) - torch\.arange",
                        _draw_decay_exponent, lambda c: c.get("temporal") == "fixed_decay"),
            NumericSite("gate_bias", "forget-gate bias range", rf"torch\.linspace\((?P<lo>{_NUM}), (?P<hi>{_NUM}), H\)",
                        _draw_gate_bias, lambda c: c.get("temporal") == "gated_decay"),
            NumericSite("rbf_bandwidth", "RBF inverse bandwidth init",
                        rf"torch\.full\(\(H,\), (?P<v>{_NUM}) \* math\.log\(self\.d_head\)\)", _draw_bandwidth,
                        lambda c: c.get("kernel") == "rbf_qknorm" and c.get("function_class") == "constant"),
            NumericSite("poly_coef", "polynomial kernel curvature", rf"1\.0 \+ s \+ (?P<v>{_NUM}) \* s \* s",
                        _draw_poly_coef,
                        lambda c: c.get("kernel") == "polynomial" and c.get("function_class") == "constant"),
            NumericSite("normaliser_eps", "normaliser epsilon", rf"a\.sum\(dim=-1, keepdim=True\) \+ (?P<v>{_NUM})\)",
                        _draw_eps, lambda c: c.get("function_class") == "linear"),
            INIT_STD,
        ),
    },
    "mm": {
        "knobs": (
            Knob(("structure",), "structure class of M",
                 _v("softmax_dense", "low_rank", "semiseparable", "toeplitz", "quasiseparable"),
                 {("softmax_dense",): "dense softmax matrix (attention)", ("low_rank",): "low-rank Q K^T matrix",
                  ("semiseparable",): "semiseparable matrix with input-dependent decay (SSD)",
                  ("toeplitz",): "Toeplitz matrix from an LTI kernel (long convolution)",
                  ("quasiseparable",): "quasiseparable matrix: semiseparable plus a free diagonal (Hydra)"}),
            Knob(("m_norm",), "normalisation of M", _v("softmax", "row_l1", "inv_sqrt_len", "none"),
                 {("softmax",): "row softmax", ("row_l1",): "row L1 normalisation",
                  ("inv_sqrt_len",): "1/sqrt(row length) scaling", ("none",): "no normalisation"}),
            Knob(("compose",), "composition", _v("none", "hadamard_decay"),
                 {("none",): "no composition", ("hadamard_decay",): "Hadamard product with a Toeplitz decay"}),
            Knob(("toeplitz_rank",), "Toeplitz kernel rank", _v(2, 4, 6, 8, 12, 16),
                 {}, lambda c: c.get("structure") == "toeplitz"),
        ),
        "numeric": (
            NumericSite("dt_range", "semiseparable dt range",
                        rf"torch\.linspace\(math\.log\((?P<lo>{_NUM})\), math\.log\((?P<hi>{_NUM})\), H\)",
                        _draw_dt_range, lambda c: c.get("structure") in ("semiseparable", "quasiseparable")),
            NumericSite("toeplitz_rates", "Toeplitz damping rates",
                        rf"torch\.linspace\(math\.log\((?P<lo>{_NUM})\), math\.log\((?P<hi>{_NUM})\), R\)",
                        _draw_toeplitz_rates, lambda c: c.get("structure") == "toeplitz"),
            NumericSite("toeplitz_omega", "Toeplitz frequency range", rf"math\.pi / (?P<v>{_NUM})\)",
                        _draw_omega_divisor, lambda c: c.get("structure") == "toeplitz"),
            NumericSite("decay_init", "Hadamard decay init", rf"torch\.pow\(2\.0, (?P<v>-{_NUM}) - torch\.arange",
                        _draw_decay_exponent, lambda c: c.get("compose") == "hadamard_decay"),
            NumericSite("row_l1_eps", "row L1 epsilon", rf"s\.abs\(\)\.sum\(dim=-1, keepdim=True\) \+ (?P<v>{_NUM})\)",
                        _draw_eps, lambda c: c.get("m_norm") == "row_l1"),
            INIT_STD,
        ),
    },
}


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
    for class_name, fw in CLASS_TO_FRAMEWORK.items():
        if re.search(rf"^\s*class {class_name}\b", program, re.M):
            return fw
    m = re.search(r"^ATTENTION\s*=\s*(\w+)", program, re.M)
    return CLASS_TO_FRAMEWORK.get(m.group(1)) if m else None


def _message_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


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
        from harness import program as program_text

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


# --------------------------------------------------------------------------------------------------------------------
# The proposer state and the HTTP server


class Proposer:
    """Numbering, seeding, adversarial schedule and the JSONL log. Thread-safe."""

    def __init__(self, seed: int = 0, adversarial_every: int = 0, log_path: Path | str | None = None):
        self.seed, self.adversarial_every = seed, adversarial_every
        self.log_path = Path(log_path) if log_path else None
        self.lock = threading.Lock()
        self.requests = self.adversarial_count = 0
        if self.log_path and self.log_path.exists():  # a resumed run continues the numbering and the cycle
            for line in self.log_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.requests = max(self.requests, int(entry.get("request", 0)))
                self.adversarial_count += bool(entry.get("adversarial"))

    def rng(self, request_no: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + request_no)

    def next_request(self) -> tuple[int, str | None]:
        with self.lock:
            self.requests += 1
            n, kind = self.requests, None
            if self.adversarial_every > 0 and n % self.adversarial_every == 0:
                kind = ADVERSARIAL_KINDS[self.adversarial_count % len(ADVERSARIAL_KINDS)]
                self.adversarial_count += 1
            return n, kind

    def answer(self, messages: list[dict]) -> tuple[Proposal, int]:
        n, kind = self.next_request()
        user = "\n".join(_message_text(m.get("content")) for m in messages if m.get("role") == "user")
        program = extract_program(user) or extract_program("\n".join(_message_text(m.get("content")) for m in messages))
        if program is None:
            proposal = Proposal(None, "none", {}, "No program found in the request; no change proposed.")
        else:
            proposal = None
            if kind:
                try:
                    proposal = adversarial(program, kind, variant=self.adversarial_count // len(ADVERSARIAL_KINDS))
                except NoMutation:
                    proposal = None
            if proposal is None:
                try:
                    proposal = propose(program, self.rng(n), n, parent_reason(user))
                except Exception as exc:  # noqa: BLE001 - a proposer bug must not cost the run an iteration
                    try:
                        proposal = mutate_note(Program(program), self.rng(n), n)
                    except Exception:  # noqa: BLE001
                        proposal = Proposal(None, "none", {}, "The proposer failed on this program; no change.")
                    proposal.params["error"] = f"{type(exc).__name__}: {exc}"
        self.log(n, proposal, program)
        return proposal, n

    def log(self, n: int, proposal: Proposal, program: str | None) -> None:
        if not self.log_path:
            return
        entry = {
            "request": n, "time": time.time(), "framework": proposal.framework, "mutation": proposal.mutation,
            "params": proposal.params, "adversarial": proposal.adversarial, "kind": proposal.kind,
            "expected_reason": proposal.expected_reason, "explanation": proposal.explanation,
            "parent_sha256": hashlib.sha256(program.encode()).hexdigest() if program else None,
            "child_sha256": hashlib.sha256(proposal.child.encode()).hexdigest() if proposal.child else None,
        }
        with self.lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")


def completion(proposal: Proposal, n: int, model: str, prompt_chars: int) -> dict:
    content = proposal.text
    prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-harness-{n}-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "harness-proposer",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "harness-proposer/0.1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        if getattr(self.server, "verbose", False):
            sys.stderr.write("[proposer] " + (format % args) + "\n")

    def _send(self, status: int, body: dict | str, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def do_GET(self):  # noqa: N802 - stdlib name
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0,
                                                         "owned_by": "harness"}]})
        elif path in ("", "/health", "/v1"):
            self._send(200, {"status": "ok", "model": MODEL_NAME})
        else:
            self._error(404, f"unknown path {self.path}")

    def do_POST(self):  # noqa: N802 - stdlib name
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"unknown path {self.path}")
            return
        try:
            body = json.loads(raw or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        try:
            proposal, n = self.server.proposer.answer(messages)
        except Exception as exc:  # noqa: BLE001 - answer with an error, keep serving
            self._error(500, f"proposer failed: {type(exc).__name__}: {exc}", "server_error")
            return
        prompt_chars = sum(len(_message_text(m.get("content"))) for m in messages)
        reply = completion(proposal, n, body.get("model") or MODEL_NAME, prompt_chars)
        if body.get("stream"):
            chunk = {**reply, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": proposal.text},
                                  "finish_reason": "stop"}]}
            self._send(200, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n", "text/event-stream")
        else:
            self._send(200, reply)


class ProposerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, proposer: Proposer | None = None, verbose=False):
        super().__init__((host, port), _Handler)
        self.proposer = proposer or Proposer()
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="harness-proposer", daemon=True)
        thread.start()
        return thread


# --------------------------------------------------------------------------------------------------------------------
# The demo: stock openevolve-run against the proposer


@dataclass
class DemoRun:
    output_dir: Path
    ledger_path: Path
    returncode: int
    log_path: Path
    proposals_path: Path
    wall_s: float = 0.0
    timed_out: bool = False

    @property
    def checkpoints(self) -> list[Path]:
        folder = self.output_dir / "checkpoints"
        found = [p for p in folder.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("_")[-1]))

    @property
    def latest_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def best_program(self) -> Path:
        return self.output_dir / "best" / "best_program.py"


def _openevolve_command() -> list[str]:
    script = Path(sys.executable).parent / "openevolve-run"
    if script.exists():
        return [str(script)]
    found = shutil.which("openevolve-run")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from openevolve.cli import main; sys.exit(main())"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the run's process group and every descendant: the evaluator's sandboxes run in sessions of
    their own, so killing the group alone would leave them behind. SIGTERM first (OpenEvolve shuts its
    pool down on it), SIGKILL after 5 s."""
    victims = set(_descendants(proc.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims |= set(_descendants(proc.pid))
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in victims:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def default_demo_dir(framework: str) -> Path:
    return REPO_ROOT / "results" / "runs" / f"demo-{framework}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_demo(framework: str, iterations: int, output_dir: Path, adversarial_every: int = 0, seed: int = 0,
             checkpoint: Path | None = None, extra_env: dict | None = None, timeout_s: float = 900,
             echo: bool | Callable[[str], None] = False) -> DemoRun:
    """Run stock ``openevolve-run`` on one framework against an in-process proposer.

    The subprocess runs with its working directory set to ``output_dir`` (OpenEvolve writes large
    artifacts to ``./artifacts``), ``HARNESS_PROFILE=smoke`` unless ``extra_env`` says otherwise, and
    ``OPENAI_API_KEY=local`` if unset. ``checkpoint`` resumes: OpenEvolve continues at
    last_iteration + 1 and runs ``iterations`` more. Its exit code is 0 even when every iteration
    failed: check the checkpoints and the ledger. Past ``timeout_s`` the run is killed, its sandboxes
    included. Proposals are logged to ``output_dir/proposals.jsonl`` (appended on resume, so the request
    numbering and the adversarial cycle continue), OpenEvolve's output to ``output_dir/openevolve.out``."""
    from harness import ledger

    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose one of {sorted(FRAMEWORKS)}")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    proposals_path, log_path = output_dir / "proposals.jsonl", output_dir / "openevolve.out"
    env = {**os.environ, "HARNESS_PROFILE": "smoke", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OPENAI_API_KEY", "local")
    env.update({k: str(v) for k, v in (extra_env or {}).items()})
    ledger_path = Path(env["HARNESS_LEDGER"]) if env.get("HARNESS_LEDGER") else ledger.default_ledger_path()
    say = echo if callable(echo) else (lambda line: print(line, flush=True)) if echo else (lambda line: None)

    server = ProposerServer("127.0.0.1", 0, Proposer(seed, adversarial_every, proposals_path))
    server.start_background()
    fw = FRAMEWORKS[framework]
    cmd = _openevolve_command() + [
        str(fw.seed_path), str(REPO_ROOT / "evaluators" / f"{framework}_eval.py"),
        "--config", str(REPO_ROOT / "openevolve_configs" / f"{framework}.yaml"),
        "--iterations", str(iterations), "--output", str(output_dir),
        "--api-base", server.url, "--primary-model", MODEL_NAME,
    ]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(Path(checkpoint).resolve())]
    started = time.time()
    timed_out = False
    try:
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=output_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")

            def pump():
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    say(line.rstrip("\n"))

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(proc)
            reader.join(timeout=10)
            if timed_out:
                log.write(f"\n[harness demo] killed after {timeout_s:.0f} s\n")
    finally:
        server.shutdown()
        server.server_close()
    return DemoRun(output_dir, ledger_path, proc.returncode if not timed_out else -9, log_path, proposals_path,
                   time.time() - started, timed_out)


# --------------------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_proposer(args: argparse.Namespace) -> int:
    proposer = Proposer(args.seed, args.adversarial_every, args.log)
    server = ProposerServer(args.host, args.port, proposer, verbose=args.verbose)
    print(server.url, flush=True)
    print(f"[proposer] serving {MODEL_NAME} (seed {args.seed}, adversarial every {args.adversarial_every or 'never'}"
          f"{', log ' + str(args.log) if args.log else ''}); Ctrl+C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _summarise(run: DemoRun, since: float, framework: str) -> int:
    from harness import ledger

    ok = run.returncode == 0 and not run.timed_out
    print()
    print(f"openevolve-run exited with {run.returncode}{' (killed: timeout)' if run.timed_out else ''} "
          f"after {run.wall_s:.0f} s")
    proposals = [json.loads(l) for l in run.proposals_path.read_text().splitlines()] if run.proposals_path.exists() else []
    if proposals:
        adv = sum(p["adversarial"] for p in proposals)
        print(f"proposals:      {run.proposals_path} ({len(proposals)} so far, {adv} adversarial)")
    try:
        rows = [r for r in ledger.evaluations(run.ledger_path, framework) if r["created_at"] >= since]
    except Exception:  # noqa: BLE001 - the summary is informative only
        rows = []
    if rows:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        best = max(r["combined_score"] for r in rows)
        print(f"evaluations:    {len(rows)} this run ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
              f"best combined_score {best:.4f}")
    latest = run.latest_checkpoint
    print(f"database:       {latest if latest else '(no checkpoint written: use --iterations a multiple of 5)'}")
    print(f"best program:   {run.best_program if run.best_program.exists() else '(none)'}")
    print(f"ledger:         {run.ledger_path}")
    print(f"openevolve log: {run.log_path} and {run.output_dir / 'logs'}")
    if latest:
        print(f"resume with:    harness demo {framework} --iterations 5 --output {run.output_dir} --checkpoint {latest}")
    if not ok or latest is None:
        print("harness demo: the run did not finish cleanly; see the log above", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else default_demo_dir(args.framework)
    if args.iterations % 5:
        print(f"[demo] note: the configs checkpoint every 5 iterations; with --iterations {args.iterations} the "
              "final state is not checkpointed (use a multiple of 5)", file=sys.stderr)
    extra = {"HARNESS_PROFILE": args.profile} if args.profile else {}
    print(f"[demo] {args.framework}: {args.iterations} iterations of stock openevolve-run against the built-in "
          f"proposer, profile {extra.get('HARNESS_PROFILE', 'smoke')}, output {output}", flush=True)
    since = time.time()
    run = run_demo(args.framework, args.iterations, output, adversarial_every=args.adversarial_every, seed=args.seed,
                   checkpoint=Path(args.checkpoint) if args.checkpoint else None, extra_env=extra,
                   timeout_s=args.timeout, echo=True)
    return _summarise(run, since, args.framework)


def register(subparsers) -> None:
    p = subparsers.add_parser("proposer", help="serve the built-in proposer (OpenAI-compatible, no weights, localhost)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 = an ephemeral port (the URL is printed first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adversarial-every", type=int, default=0, metavar="N",
                   help="every N-th request gets an adversarial proposal (leak, frozen, params in turn); 0 = never")
    p.add_argument("--log", type=Path, help="append one JSON line per proposal here")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    p.set_defaults(func=cmd_proposer)

    p = subparsers.add_parser("demo", help="run stock openevolve-run end to end against the built-in proposer")
    p.add_argument("framework", choices=sorted(FRAMEWORKS))
    p.add_argument("--iterations", type=int, default=5, help="a multiple of 5 (the configs' checkpoint_interval)")
    p.add_argument("--output", help="output folder (default results/runs/demo-FW-<timestamp>/)")
    p.add_argument("--adversarial-every", type=int, default=0, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="resume from this checkpoint folder (runs --iterations more)")
    p.add_argument("--profile", default=None, help="HARNESS_PROFILE for the run (default smoke)")
    p.add_argument("--timeout", type=float, default=3600.0, help="kill the run after this many seconds")
    p.set_defaults(func=cmd_demo)

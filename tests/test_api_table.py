"""The table of what a block may use from torch (``harness/trusted/api_table.py``): the committed table is what its
rules give on the installed torch, it holds nothing the policy's deny rules refuse, and the policy admits only what
it lists. torch's namespace holds its JIT, its storages and its threads beside its operators; these were reachable
under the deny-list alone."""

import subprocess
import sys
import types

import einops
import pytest
import torch

from harness.diagnostics import api_table as generator
from harness.trusted import api_table, policy as policy_module
from test_static_gate import GOOD, assert_refused, good_with, policy

INSTALLED = (torch.__version__.split("+")[0], einops.__version__)


@pytest.mark.skipif(INSTALLED != (api_table.TORCH_VERSION, api_table.EINOPS_VERSION),
                    reason=f"the table was generated from torch {api_table.TORCH_VERSION} and einops "
                           f"{api_table.EINOPS_VERSION}; this machine has {INSTALLED}")
def test_the_committed_table_is_what_its_rules_give():
    # in a process of its own: torch.compile, run by other tests in this one, adds names to torch's classes
    check = subprocess.run([sys.executable, "-m", "harness.diagnostics.api_table", "--check"], capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_module_a_block_may_import_has_its_row():
    assert set(policy_module.MODULE_MEMBERS) == policy_module.ALLOWED_MODULES


def test_the_table_holds_nothing_the_deny_rules_refuse():
    for module, names in api_table.MEMBERS.items():
        for name in names:
            assert not generator.refused_through_modules(name), (module, name)
    assert not [name for name in api_table.ATTRIBUTES if generator.refused_on_values(name)]
    # what torch 2.13 has under these names is an operator, a class, a dtype or a constant, never a module
    if INSTALLED[0] == api_table.TORCH_VERSION:
        import importlib
        for module, names in api_table.MEMBERS.items():
            base = importlib.import_module(module)
            assert not [n for n in names if isinstance(getattr(base, n), types.ModuleType)], module


# Public names of the installed torch that no attention needs and that the deny-list alone did not refuse: the JIT's
# compiler and its IR, interop threads, storages that map files, the dispatch machinery, process-wide queries.
OUTSIDE_THE_TABLE = [
    "torch.import_ir_module", "torch.parse_ir", "torch.fork", "torch.wait", "torch.FileCheck",
    "torch.UntypedStorage", "torch.FloatStorage", "torch.from_dlpack", "torch.DisableTorchFunctionSubclass",
    "torch.get_num_threads", "torch.typename", "torch.cond", "F.handle_torch_function",
    "torch.autograd.gradcheck", "torch.autograd.detect_anomaly", "nn.SyncBatchNorm",
]


@pytest.mark.parametrize("name", OUTSIDE_THE_TABLE)
def test_a_public_torch_name_outside_the_table_is_refused(name):
    module, _, member = name.rpartition(".")
    real = {"F": "torch.nn.functional", "nn": "torch.nn"}.get(module, module)
    import importlib
    assert hasattr(importlib.import_module(real), member), "the installed torch has it: the table is what keeps it out"
    report = policy(good_with(body=f"_ = {name}"))
    assert any(f"{real}.{member} is not in the table" in v and "api_table.py" in v for v in report.violations), \
        report.violations


@pytest.mark.parametrize("block", [
    "from torch import fork\n\n" + GOOD,
    good_with(body="f = getattr(torch, 'fork')"),
])
def test_a_name_outside_the_table_is_refused_however_it_is_read(block):
    assert_refused(block, "torch.fork is not in the table")


@pytest.mark.parametrize("line,attribute", [
    ("y = x.softmx(-1)", "softmx"),  # a typo: the message names the attribute it resembles
    ("y = torch.Tensor.softmx(x, -1)", "softmx"),
    ("g = (v for v in x); _ = g.gi_yieldfrom", "gi_yieldfrom"),  # a generator's own fields reach its frame's state
    ("_ = ValueError().with_traceback(None)", "with_traceback"),
])
def test_an_attribute_outside_the_table_is_refused(line, attribute):
    assert_refused(good_with(body=line), f"attribute {attribute!r} is neither in the table")


def test_the_message_names_the_closest_entries():
    (message,) = policy(good_with(body="y = torch.softmx(x, -1)")).violations
    assert "did you mean torch.softmax" in message
    (message,) = policy(good_with(body="y = x.softmx(-1)")).violations
    assert "did you mean softmax" in message


def test_what_the_block_names_itself_may_be_read_on_any_object():
    block = GOOD.replace("        self.proj = nn.Linear(d_model, d_model)",
                         "        self.proj = nn.Linear(d_model, d_model)\n"
                         "        self.layers = nn.ModuleList([Scaled(d_model) for _ in range(2)])\n"
                         "        self.register_buffer('window', torch.ones(d_model))").replace(
        "        return self.proj(x)",
        "        for layer in self.layers:\n            x = layer(x) * layer.gain + layer.HALF + layer.offset()\n"
        "        other = self\n        x = x * other.window\n        return self.proj(x)")
    block = """
class Scaled(nn.Module):
    HALF = 0.5

    def __init__(self, d):
        super().__init__()
        self.gain = 1.0
        self.lin = nn.Linear(d, d)

    def offset(self):
        return self.lin.bias.sum() * self.lin.weight.shape[0] + self.lin.in_features

    def forward(self, x):
        return self.lin(x)

""" + block
    assert policy(block).ok, policy(block).violations


def test_what_torch_values_have_is_readable():
    line = ("q = torch.linalg.eigh(x.transpose(-1, -2) @ x).eigenvalues.max(dim=-1).values + torch.finfo(x.dtype).eps"
            " + x.device.index.bit_length() if x.device.type == 'cuda' else x.new_zeros(x.shape).mT.sum() "
            "+ torch.float32.itemsize + torch.Tensor.softmax(x, -1).sum() + 'a,b'.split(',').count('a')")
    assert policy(good_with(body=line)).ok, policy(good_with(body=line)).violations

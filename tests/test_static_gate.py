"""The static half of the gate: markers, frozen region, splice and the block policy. No torch needed."""

import pytest

from harness.trusted import program
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.policy import check_block, module_aliases
from harness.scaffold import ATTENTION_KWARGS

SEED = FRAMEWORKS["ttr"].seed_source()
CLASS = FRAMEWORKS["ttr"].class_name


def with_block(block: str, source: str = SEED) -> str:
    parts = program.split(source)
    return parts.head + block + parts.tail


def policy(block: str):
    parts = program.split(SEED)
    return check_block(block, CLASS, ATTENTION_KWARGS, module_aliases(parts.head))


def assert_refused(block: str, fragment: str) -> None:
    report = policy(block)
    assert any(fragment in v for v in report.violations), report.violations


GOOD = f"""
class {CLASS}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
"""


def good_with(preamble: str = "", init: str = "", body: str = "", methods: str = "") -> str:
    """GOOD with lines added: ``preamble`` above it, ``init`` at the end of __init__, ``body`` at the top of forward,
    ``methods`` (indented already) before forward."""
    return preamble + GOOD.replace(
        "        self.proj = nn.Linear(d_model, d_model)",
        "        self.proj = nn.Linear(d_model, d_model)\n" + "".join("        " + line + "\n" for line in init.splitlines())
    ).replace("        return self.proj(x)",
              "".join("        " + line + "\n" for line in body.splitlines()) + "        return self.proj(x)"
              ).replace("    def forward(self, x):", methods + "    def forward(self, x):")


def test_every_seed_splits_into_one_block():
    for fw in FRAMEWORKS.values():
        parts = program.split(fw.seed_source())
        assert f"class {fw.class_name}" in parts.block
        assert program.splice(fw.seed_source(), fw.seed_source()) == fw.seed_source()


def test_splice_keeps_the_pristine_outside_and_the_candidate_block():
    candidate = with_block(GOOD)
    assert program.splice(SEED, candidate) == candidate
    # Trailing whitespace outside the block is the only tolerated difference.
    spaced = candidate.replace("import math\n", "import math   \n")
    assert program.split(program.splice(SEED, spaced)).head == program.split(SEED).head


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda s: s.replace("import torch.nn.functional as F", "import torch.nn.functional as F\nF.gelu = F.relu"), "changed"),
        (lambda s: s + "\nimport harness.scaffold\n", "changed"),
        (lambda s: s.replace("ATTENTION = ", "ATTENTION = None and "), "changed"),
        (lambda s: s.replace(program.END + "\n", ""), "exactly one"),
        (lambda s: s.replace(program.START, program.START + "\n" + program.START), "exactly one"),
        (lambda s: s + "\n" + program.START + "\n" + program.END + "\n", "exactly one"),
        (lambda s: s.replace(program.START, "#EVOLVE-BLOCK-START  extra"), "exactly one"),
    ],
    ids=["patch_ffn_activation", "import_after_block", "rebind_attention", "missing_end", "two_starts", "second_block", "malformed_marker"],
)
def test_frozen_region_violations_are_refused(mutate, fragment):
    with pytest.raises(program.FrozenRegionError, match=fragment):
        program.splice(SEED, mutate(SEED))


def test_good_block_passes_policy():
    assert policy(GOOD).ok, policy(GOOD).violations


@pytest.mark.parametrize(
    "snippet, fragment",
    [
        ("import os", "import of 'os'"),
        ("import subprocess", "import of 'subprocess'"),
        ("from pathlib import Path", "import from 'pathlib'"),
        ("import time", "import of 'time'"),
        ("import harness.scaffold", "import of 'harness.scaffold'"),
        ("from torch import _C", "importing '_C'"),
        ("import torch.utils.cpp_extension", "modules a block may use"),
        ("F.gelu = F.relu", "monkeypatching"),
        ("torch.nn.functional.softmax = None", "monkeypatching"),
        ("x = eval('1')", "'eval'"),
        ("exec('pass')", "'exec'"),
        ("y = compile('1', 'f', 'eval')", "'compile'"),
        ("z = open('/etc/passwd')", "'open'"),
        ("w = __import__('os')", "'__import__'"),
        ("t = torch.load('x')", "attribute 'load'"),
        ("torch.manual_seed(0)", "attribute 'manual_seed'"),
        ("print('combined_score: 99')", "module-level Expr"),
        ("for i in range(3): pass", "module-level For"),
    ],
)
def test_policy_rejects_module_level_escapes(snippet, fragment):
    report = policy(GOOD + "\n" + snippet + "\n")
    assert not report.ok
    assert any(fragment in v for v in report.violations), report.violations


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("return x.__class__.__bases__[0]", "dunder attribute '__class__'"),
        ("return getattr(x, '__class__')", "dunder attribute '__class__'"),
        # a constant name in getattr/hasattr is checked as the attribute it names
        ("return getattr(x, 'grad_fn')", "attribute 'grad_fn'"),
        ("return getattr(torch, 'load')", "attribute 'load'"),
        ("return x if hasattr(torch, 'os') else x", "torch.os is a module"),
        ("return getattr(self.proj, '_parameters')", "private attribute '_parameters'"),
        # getattr, hasattr and type as values would take every later lookup past the checks
        ("g = getattr\n        return g(x, 'sum')()", "getattr may only be called directly"),
        ("return functools.reduce(getattr, ['sum'], x)()", "getattr may only be called directly"),
        ("t = type\n        return x", "type may only be called directly"),
        # the autograd graph reaches the frozen model's parameters
        ("n = x.grad_fn.next_functions\n        return x", "attribute 'grad_fn'"),
        # helpers that evaluate strings as code
        ("typing.get_type_hints(self.forward)\n        return x", "typing.get_type_hints is not allowed"),
        ("functools.singledispatch(print)\n        return x", "functools.singledispatch is not allowed"),
        ("x.register_post_accumulate_grad_hook(print)\n        return x", "attribute 'register_post_accumulate_grad_hook'"),
        ("torch.default_generator.manual_seed(0)\n        return x", "attribute 'default_generator'"),
        ("with torch.cuda.amp.autocast(enabled=False):\n            return x", "use torch.autocast"),
        ("return getattr(x, name)", "getattr is allowed only"),
        ("F.softmax = lambda a, dim: a\n        return x", "monkeypatching"),
        ("global COUNT\n        return x", "'global'"),
        ("return torch._C._nn.gelu(x)", "private attribute '_C' is allowed only on self"),
        ("self.register_forward_hook(None)\n        return x", "attribute 'register_forward_hook'"),
        ("return vars(self)", "'vars'"),
        ("return type('X', (), {})", "type(...)"),
    ],
)
def test_policy_rejects_escapes_inside_forward(body, fragment):
    block = "import functools\nimport typing\n" + GOOD.replace("return self.proj(x)", body)
    assert_refused(block, fragment)


def test_a_string_annotation_that_is_code_is_refused():
    block = GOOD.replace("    def forward(self, x):", "    def forward(self, x: \"(print(1), int)[1]\"):")
    assert any("string annotation may only name a type" in v for v in policy(block).violations)
    typing_import = "from typing import get_type_hints\n" + GOOD
    assert any("typing.get_type_hints is not allowed" in v for v in policy(typing_import).violations)


@pytest.mark.parametrize(
    "head, body",
    [
        ("", "return self.proj(x) if hasattr(F, 'scaled_dot_product_attention') else x"),
        ("", "return getattr(self, 'proj')(x)"),
        ("from typing import Optional\n", "y: Optional[torch.Tensor] = self.proj(x)\n        return y"),
        ("", "gen = torch.Generator().manual_seed(0)\n        return self.proj(x) + 0 * torch.randn(1, generator=gen)"),
        ("", "input = self.proj(x)\n        time = input.shape[1]\n        return input[:, :time]"),
        ("", "assert x.dim() == 3, f'{type(self).__name__} wants (B, T, D)'\n        return self.proj(x)"),
        ("NEG = float('-inf')\nLOG_BASE = math.log(10000.0)\nDTYPE = torch.float32\n", "return self.proj(x.to(DTYPE))"),
        ("", "self.apply(lambda m: None)\n        return self.proj(x)"),
        ("", "gen = torch.Generator()\n        gen.set_state(gen.get_state())\n        return self.proj(x)"),
        ("", "self.proj.apply(lambda m: None)\n        return self.proj(x)"),  # a submodule's own apply
        ("", "self.seed = 0\n        gen = torch.Generator()\n        gen.manual_seed(self.seed)\n        return self.proj(x)"),  # self.seed
    ],
)
def test_policy_accepts_common_idioms(head, body):
    block = head + GOOD.replace("return self.proj(x)", body)
    report = policy(block)
    assert report.ok, report.violations


# Idioms a sweep of LLM-style attention code found refused, each with a reason that did not hold.
IDIOMS = {
    "staticmethod_called_through_its_class": GOOD.replace("    def forward(self, x):", (
        "    @staticmethod\n    def halve(t):\n        return t / 2\n\n    def forward(self, x):")).replace(
        "return self.proj(x)", f"return {CLASS}.halve(self.proj(x))"),
    "classmethod_reading_constants_and_staticmethods": GOOD.replace("    def forward(self, x):", (
        "    EPS = 1e-6\n\n    @staticmethod\n    def halve(t):\n        return t / 2\n\n"
        "    @classmethod\n    def mask(cls, n: int):\n        return cls.halve(torch.ones(n, n) + cls.EPS).tril()\n\n"
        "    def forward(self, x):")).replace("return self.proj(x)", "return self.proj(x) + 0 * self.mask(x.shape[1]).sum()"),
    "literal_options_with_hyphens": "from typing import Literal\n" + GOOD.replace(
        "max_seq_len=128)", "max_seq_len=128, *, norm: Literal['layer-norm', 'rms-norm'] = 'layer-norm')"),
}


@pytest.mark.parametrize("name", sorted(IDIOMS))
def test_idioms_once_refused_are_accepted(name):
    report = policy(IDIOMS[name])
    assert report.ok, report.violations


@pytest.mark.parametrize("body", [
    "n = '{} heads of {:d}, {name!r:>8}'.format(2, 3, name='x')",
    "n = '{0}/{1}'.format(*x.shape[:2])",
    "match x.dim():\n            case 3:\n                pass\n            case _:\n                pass",
    "match self.proj:\n            case nn.Linear(in_features=d):\n                pass\n            case _:\n"
    "                pass",
    "time = x.shape[1]\n        x = x[:, :time]",
    "seen = []\n        seen.append(x)\n        table = {'a': 1}",
    "kind = x.device.type\n        y = x.cpu() if kind == 'cpu' else x\n        self.proj.weight.requires_grad_(True)",
    "n = sum(1 for _ in self.modules())\n        w = nn.utils.parametrize.is_parametrized(self.proj)",
    "if (n := x.shape[1]) > 0:\n            x = x * n",
], ids=["format_with_plain_fields", "format_positional", "match_on_a_value", "match_a_class_pattern",
        "a_local_named_like_a_module", "lists_and_dicts_inside_a_call", "methods_named_like_modules",
        "module_chains_from_an_import", "walrus_in_a_function"])
def test_formatting_matching_and_shadowing_stay_allowed(body):
    block = GOOD.replace("return self.proj(x)", body + "\n        return self.proj(x)")
    assert policy(block).ok, policy(block).violations


def test_attributes_of_the_block_s_own_submodules_may_be_set():
    block = GOOD.replace("        self.proj = nn.Linear(d_model, d_model)\n",
                         "        self.proj = nn.Linear(d_model, d_model)\n        self.proj.weight = nn.Parameter("
                         "torch.zeros(d_model, d_model))\n        self.drop = nn.Dropout(0.1)\n        self.drop.p = 0.0\n"
                         "        self.act = F.gelu\n")
    assert "self.proj.weight = " in block and policy(block).ok, policy(block).violations


def test_constants_of_tuples_and_frozensets_stay_allowed():
    block = ("SIZES = (1, 2, 4)\nNAMES = frozenset(('elu', 'relu'))\nALSO = frozenset({'a', 'b'})\n"
             "PAIRS = tuple([(1, 2), (3, 4)])\n\n\n" + GOOD)
    assert policy(block).ok, policy(block).violations


def test_a_closure_over_a_name_like_a_module_and_constant_defaults_stay_allowed():
    block = GOOD.replace("return self.proj(x)", "time = x.shape[1]\n        step = lambda t: t + time\n"
                         "        def pick(t):\n            return x[:, t] * time\n        return self.proj(x)")
    block = block.replace("def forward(self, x):", "def forward(self, x, eps: float = 1e-6, act=F.gelu, "
                          "dims=(1, 2), dtype=torch.float32, scale=math.sqrt(2.0), name=str(1)):")
    assert policy(block).ok, policy(block).violations


def test_a_variable_may_be_named_like_a_module_only_where_no_import_binds_that_name():
    block = GOOD.replace("return self.proj(x)", "time = x.shape[1]\n        return self.proj(x)[:, :time]")
    assert policy(block).ok, policy(block).violations
    head = {**module_aliases(program.split(SEED).head), "time": "time"}  # a frozen region that imported time
    report = check_block(block, CLASS, ATTENTION_KWARGS, head)
    assert any("use of 'time' is not allowed" in v for v in report.violations), report.violations


def test_a_string_annotation_naming_a_type_is_accepted():
    block = GOOD.replace("    def forward(self, x):", f"    def forward(self, x: \"torch.Tensor\") -> \"{CLASS}\":")
    assert policy(block).ok, policy(block).violations


def test_policy_requires_the_class_and_its_keywords():
    renamed = GOOD.replace(CLASS, "SomethingElse")
    assert any("must define class" in v for v in policy(renamed).violations)
    no_kw = GOOD.replace("dropout=0.1, max_seq_len=128", "dropout=0.1")
    assert any("must accept the keywords" in v for v in policy(no_kw).violations)
    with_kwargs = GOOD.replace("dropout=0.1, max_seq_len=128", "**kwargs")
    assert policy(with_kwargs).ok


def test_policy_allows_constants_helpers_and_allowed_imports():
    block = "import math\nfrom functools import partial\nfrom typing import Optional\nEPS = 1e-6\nSCALE = math.pi * 2\n\n\ndef helper(x):\n    return x * EPS\n" + GOOD
    assert policy(block).ok, policy(block).violations


def test_syntax_error_surfaces_as_syntax_error():
    with pytest.raises(SyntaxError):
        policy(GOOD.replace("def forward(self, x):", "def forward(self, x)"))


@pytest.mark.parametrize(
    "block, fragment",
    [
        (GOOD.replace("    def forward(self, x):", "    def __call__(self, x):\n        return x\n\n    def forward(self, x):"),
         "defining __call__ is not allowed"),
        ("def math(x):\n    return x\n" + GOOD, "'math' is bound by the frozen code"),
        ("import math as F\n" + GOOD, "rebinds a name of the frozen code"),
        ("class Base(torch.Tensor):\n    pass\n" + GOOD, "may derive only from torch.nn classes"),
        ("class Base(nn.Parameter):\n    pass\n" + GOOD, "may derive only from torch.nn classes"),
        ("class Base(nn.Module, metaclass=type):\n    pass\n" + GOOD, "class keywords"),
        (GOOD.replace("return self.proj(x)", "return self.proj._forward_hooks"), "attribute '_forward_hooks' is not allowed"),
        (GOOD.replace("return self.proj(x)", "lin = self.proj\n        lin.bias = None\n        return x"),
         "of anything but self"),
        (GOOD.replace("return self.proj(x)", "torch.cuda.synchronize()\n        return self.proj(x)"),
         "torch.cuda is a module a block may not use"),
        (GOOD.replace("return self.proj(x)", "self = F\n        self.softmax = None\n        return x"),
         "'self' may only be the first parameter of a method"),
        (GOOD.replace("return self.proj(x)", "poke = lambda self: None\n        return x"),
         "'self' may only be the first parameter of a method"),
        ("class Helper(nn.Module):\n    @staticmethod\n    def poke(self):\n        self.softmax = None\n\n\n" + GOOD,
         "'self' may only be the first parameter of a method"),
        ("class Helper(nn.Module):\n    def poke(self):\n        self.softmax = None\n\n\n"
         + GOOD.replace("return self.proj(x)", "Helper.poke(torch.Tensor)\n        return x"),
         "Helper.poke may only be called with self"),
        ("class Helper(nn.Module):\n    def poke(self):\n        self.softmax = None\n\n\n"
         + GOOD.replace("return self.proj(x)", "self.h = Helper\n        return x"),
         "the class Helper may only be instantiated"),
        (GOOD.replace("return self.proj(x)", "type(self).forward(torch.Tensor, x)\n        return x"),
         "type(x) may only be compared"),
        (GOOD.replace("return self.proj(x)", "return super(type(self), torch.Tensor).forward(x)"),
         "super may only be called as super() or super(Class, self)"),
        (GOOD.replace("return self.proj(x)", "f = torch.nn.functional\n        return f.relu(x)"),
         "the module torch.nn.functional may only be used as torch.nn.functional.name"),
        ("class Fn(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, a):\n        return a\n\n\n"
         + GOOD.replace("return self.proj(x)", "return Fn.forward(torch.Tensor, x)"),
         "the autograd Function Fn may only be used as Fn.apply(...)"),
        ("class Fn(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, a):\n        ctx = F\n"
         "        ctx.softmax = None\n        return a\n\n\n" + GOOD, "of anything but self"),
        ("class Fn(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, a):\n        return a\n\n\n"
         + GOOD.replace("return self.proj(x)", "ctx = F\n        ctx.softmax = None\n        return x"),
         "of anything but self"),
        ("class Helper(nn.Module):\n    pass\n\n\n"
         + GOOD.replace("return self.proj(x)", "Helper.train(torch.Tensor)\n        return x"),
         "Helper.train may only be called with self"),
        ("sm = staticmethod\n\n\nclass Helper(nn.Module):\n    @sm\n    def poke(self):\n        self.softmax = None\n\n\n"
         + GOOD, "'self' may only be the first parameter of a method"),
        (GOOD.replace("return self.proj(x)", "torch.set_float32_matmul_precision('medium')\n        return self.proj(x)"),
         "it changes a process-wide torch setting"),
        (GOOD.replace("return self.proj(x)", "torch.autograd.set_detect_anomaly(True)\n        return self.proj(x)"),
         "it changes a process-wide torch setting"),
        ("from torch import set_flush_denormal\n" + GOOD, "it changes a process-wide torch setting"),
        (GOOD.replace("    def forward(self, x):", "    def poke(self):\n        self.softmax = None\n\n"
                      "    @classmethod\n    def sneak(cls):\n        cls.poke(torch.Tensor)\n\n    def forward(self, x):"),
         "in the classmethod sneak, cls may only be instantiated"),
        ("class Helper(nn.Module):\n    @staticmethod\n    def poke(a):\n        return a\n\n\n"
         "class Helper(nn.Module):\n    def poke(self):\n        self.softmax = None\n\n\n"
         + GOOD.replace("return self.proj(x)", "Helper.poke(torch.Tensor)\n        return x"),
         "Helper.poke may only be called with self"),
        ("class A(nn.Module):\n    poke = 1\n\n\nclass Helper(nn.Module):\n    def poke(self):\n        self.softmax = None\n\n\n"
         + GOOD.replace("return self.proj(x)", "Helper.poke(torch.Tensor)\n        return x"),
         "Helper.poke may only be called with self"),
        ("class Helper(nn.Module):\n    poke = 1\n\n    def poke(self):\n        self.softmax = None\n\n\n"
         + GOOD.replace("return self.proj(x)", "Helper.poke(torch.Tensor)\n        return x"),
         "Helper.poke may only be called with self"),
        ("class Helper(nn.Module):\n    @staticmethod\n    def poke(a):\n        return a\n\n    def poke(self):\n"
         "        self.softmax = None\n\n\n" + GOOD.replace("return self.proj(x)", "Helper.poke(torch.Tensor)\n        return x"),
         "Helper.poke may only be called with self"),
        ("from typing import Optional as Literal\n" + GOOD.replace("max_seq_len=128)", "max_seq_len=128, *, "
                                                                   "n: Literal['__import__(\"os\")'] = None)"),
         "a string annotation may only name a type"),
        (GOOD.replace("return self.proj(x)", "self.compile()\n        return self.proj(x)"), "attribute 'compile'"),
        ("from functools import cached_property\n" + GOOD, "functools.cached_property is not allowed"),
        (GOOD.replace("return self.proj(x)", "setattr(self, 'a', 1)\n        return self.proj(x)"),
         "for a computed name use self.add_module"),
        (GOOD.replace("return self.proj(x)", "n = self.__class__.__name__\n        return self.proj(x)"),
         "type(self).__name__ names the class"),
        ("from torch.nn.parameter import Parameter\n" + GOOD, "; use nn.Parameter"),
        ("import functools\n\n\ndef probe(a):\n    return a\n\n\n"
         + GOOD.replace("return self.proj(x)", "functools.wraps(probe, assigned=('__code__',), updated=())"
                        "(torch.is_tensor)\n        return self.proj(x)"),
         "functools.wraps is not allowed"),
        ("from functools import wraps\nARGS = (1, ('__code__',))\n\n\n@wraps(*ARGS)\ndef probe(a):\n    return a"
         "\n\n\n" + GOOD, "functools.wraps is not allowed"),
        ("def f(x):\n    import torch as self\n    self.save(x, 'f.pt')\n    return x\n\n\n" + GOOD,
         "'self' may only be the first parameter of a method"),
        (GOOD.replace("return self.proj(x)", "match x:\n            case self:\n                pass\n"
                      "        return x"), "'self' may only be the first parameter of a method"),
        (GOOD.replace("return self.proj(x)", "try:\n            pass\n        except Exception as self:\n"
                      "            pass\n        return x"), "'self' may only be the first parameter of a method"),
        ("class Fn(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, a):\n"
         "        import torch.nn.functional as ctx\n        ctx.softmax = None\n        return a\n\n\n" + GOOD,
         "of anything but self"),
        (GOOD.replace("return self.proj(x)", "g = '{0.__globals__}'.format\n        g(torch.is_tensor)\n"
                      "        return self.proj(x)"), ".format may only be called, on a string literal"),
        (GOOD.replace("return self.proj(x)", "self.fmt = '{0.__globals__}'\n        self.fmt.format(self.forward)\n"
                      "        return self.proj(x)"), ".format may only be called, on a string literal"),
        (GOOD.replace("return self.proj(x)", "n = [0 for os in ()]\n        os.getcwd()\n        return self.proj(x)"),
         "use of 'os' is not allowed"),
        ("def count(x, n=torch.zeros(1)):\n    n.add_(1)\n    return x\n\n\n" + GOOD,
         "a default argument of count may only be a constant"),
        ("def keep(x, store=nn.ModuleList()):\n    return x\n\n\n" + GOOD,
         "a default argument of keep may only be a constant"),
        ("class Base(nn.Module):\n    STORE = {}\n\n\n" + GOOD, "in the body of Base, a list, set or dict"),
        ("class Base(nn.Module):\n    STORE = torch.zeros(1)\n\n\n" + GOOD,
         "class-level Assign statement is not allowed in Base"),
        (GOOD.replace("return self.proj(x)", "m = torch.get_device_module('cpu')\n        return self.proj(x)"),
         "attribute 'get_device_module' is not allowed"),
        (GOOD.replace("return self.proj(x)", "self.m = x.new_zeros(1)\n        b = self.m.torch.glob\n"
                      "        return self.proj(x)"), "attribute 'torch' is not allowed here: it names a module"),
        (GOOD.replace("return self.proj(x)", "t = torch.Tensor.mro()[0]\n        return self.proj(x)"),
         "attribute 'mro' is not allowed"),
        (GOOD.replace("return self.proj(x)", "f = x.new_zeros(1).getattr\n        return self.proj(x)"),
         "attribute 'getattr' is not allowed"),
        (GOOD.replace("return self.proj(x)", "self.sm = F.softmax\n        self.sm.store = 1\n        return self.proj(x)"),
         "assigning to the attribute 'store' of anything but self"),
        ("def counter(tick=(i for i in range(9))):\n    return next(tick)\n\n\n" + GOOD,
         "a default argument of counter may only be a constant"),
        ("def h(a=(F := 1)):\n    return a\n\n\n" + GOOD, "a default argument of h may only be a constant"),
        (GOOD.replace("return self.proj(x)", "self._register_state_dict_hook(self.forward)\n        return self.proj(x)"),
         "attribute '_register_state_dict_hook' is not allowed"),
        (GOOD.replace("return self.proj(x)", "self._forward_hooks[0] = self.forward\n        return self.proj(x)"),
         "attribute '_forward_hooks' is not allowed"),
        (GOOD.replace("return self.proj(x)", "self._buffers['b'] = x\n        return self.proj(x)"),
         "attribute '_buffers' is not allowed"),
        (GOOD.replace("return self.proj(x)", "x.backward(torch.ones_like(x), retain_graph=True)\n        return self.proj(x)"),
         "use torch.autograd.grad"),
        (GOOD.replace("return self.proj(x)", "torch.autograd.backward(x, torch.ones_like(x))\n        return self.proj(x)"),
         "attribute 'backward' is not allowed"),
        (GOOD.replace("return self.proj(x)", "x.detach_()\n        return self.proj(x)"), "use x.detach()"),
        ("import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef store(k):\n    return k\n\n\n" + GOOD,
         "functools.lru_cache is not allowed"),
        (GOOD.replace("return self.proj(x)", "self.register_buffer('__bool__', x)\n        return self.proj(x)"),
         "the string '__bool__' names a special attribute"),
        ("import functools\n\n\n@functools.lru_cache(maxsize=(F := 1))\ndef h(a):\n    return a\n\n\n" + GOOD,
         "an assignment expression (:=) is allowed only inside"),
        (GOOD.replace("return self.proj(x)", "match torch.is_tensor:\n            case object(__globals__=g):\n"
                      "                pass\n        return self.proj(x)"), "dunder attribute '__globals__'"),
        (GOOD.replace("return self.proj(x)", "match x:\n            case object(grad_fn=g):\n"
                      "                pass\n        return self.proj(x)"), "attribute 'grad_fn' is not allowed"),
        (GOOD.replace("return self.proj(x)", "match x:\n            case torch.Tensor(f_back=b, _base=p):\n"
                      "                pass\n        return self.proj(x)"), "private attribute '_base'"),
        (GOOD.replace("return self.proj(x)", "s = '{0.__globals__[os].environ}'.format(torch.is_tensor)\n"
                      "        return self.proj(x)"), ".format may only be called, on a string literal"),
        (GOOD.replace("return self.proj(x)", "s = '{a:{a.__class__}}'.format_map({'a': 1})\n"
                      "        return self.proj(x)"), ".format_map may only be called, on a string literal"),
        (GOOD.replace("return self.proj(x)", "t = '{0.' + '__globals__}'\n        s = t.format(torch.is_tensor)\n"
                      "        return self.proj(x)"), ".format may only be called, on a string literal"),
        ("def probe(a):\n    return os.environ\n\n\ndef other(os):\n    return os\n\n\n" + GOOD,
         "use of 'os' is not allowed"),
        ("SEEN = []\n\n\n" + GOOD, "at the top of the block, a list, set or dict there is state"),
        ("SEEN = {'calls': 0}\n\n\n" + GOOD, "at the top of the block, a list, set or dict there is state"),
        ("SEEN = tuple([list()])\n\n\n" + GOOD, "at the top of the block, a list, set or dict there is state"),
        (GOOD.replace("    def forward(self, x):", "    SEEN = set()\n\n    def forward(self, x):"),
         "a list, set or dict there is state"),
        ("def remember(x, seen=[]):\n    seen.append(x)\n    return x\n\n\n" + GOOD,
         "a default argument of remember"),
    ],
    ids=["dunder_method", "rebinds_a_frozen_name", "import_rebinds_a_frozen_name", "tensor_base", "parameter_base",
         "metaclass", "private_on_a_submodule", "assignment_on_a_local", "module_outside_the_table",
         "self_rebound", "self_in_a_lambda", "self_in_a_staticmethod", "method_called_on_a_torch_class",
         "class_stored", "method_through_type", "super_with_another_object", "module_chain_bound",
         "function_method_called_directly", "function_context_rebound", "context_outside_a_function",
         "staticmethod_under_another_name", "inherited_method_called_on_a_torch_class", "process_wide_setting",
         "process_wide_setting_of_a_submodule", "process_wide_setting_imported", "classmethod_calls_with_a_torch_class",
         "static_in_one_definition_only", "constant_of_another_class", "constant_then_method", "static_then_method", "literal_that_is_another_name", "compile_on_self", "cached_property",
         "setattr_advice", "class_dunder_advice", "parameter_module_advice", "wraps_with_assigned",
         "wraps_with_starred_arguments", "torch_imported_as_self", "match_captures_self", "except_binds_self",
         "torch_imported_as_ctx", "format_bound_to_a_name", "format_on_an_attribute_of_self",
         "name_bound_only_in_a_comprehension", "tensor_default", "module_default", "dict_in_a_helper_class",
         "tensor_in_a_helper_class", "device_module_by_call", "module_name_read_through_self",
         "class_by_mro", "builtin_getattr_as_an_attribute", "attribute_set_on_a_stored_torch_function",
         "generator_default", "walrus_default_rebinds_a_frozen_name", "walrus_in_a_decorator",
         "private_hook_registration", "private_hook_table", "private_registry", "backward_inside_forward",
         "autograd_backward", "detach_in_place", "lru_cache", "dunder_as_a_string", "match_reads_a_dunder",
         "match_reads_a_forbidden_attribute", "match_reads_a_private_attribute", "format_reads_attributes",
         "format_map_in_a_nested_spec", "format_on_a_built_string", "shadowed_name_bound_in_another_function",
         "module_level_list", "module_level_dict", "list_inside_a_tuple", "class_level_set", "mutable_default"],
)
def test_the_allow_list_refuses(block, fragment):
    assert_refused(block, fragment)


def test_the_allow_list_admits_what_attention_code_uses():
    block = ("import torch.nn.functional as F\nfrom torch.nn.utils.parametrizations import weight_norm\n"
             "from typing import Optional\n\n\nclass Gate(nn.Linear):\n    pass\n\n\n" + GOOD.replace(
                 "        self.proj = nn.Linear(d_model, d_model)",
                 "        self.proj = weight_norm(Gate(d_model, d_model))\n        self._cache: Optional[torch.Tensor] = None\n"
                 "        self.act = F.gelu\n        nn.init.zeros_(self.proj.bias)").replace(
                 "return self.proj(x)", "self._cache = None\n        return self.act(torch.fft.irfft(torch.fft.rfft("
                 "self.proj(x), dim=1), n=x.shape[1], dim=1))"))
    assert policy(block).ok, policy(block).violations


CUSTOM_FUNCTION = """
class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, factor: float):
        ctx.factor = factor
        ctx.save_for_backward(a)
        return a * factor

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * ctx.factor, None


scale = Scale.apply


class Base(nn.Module):
    SCALE = 0.5

    def __init__(self, d_model):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    @property
    def width(self) -> int:
        return self.proj.in_features

    @width.setter
    def width(self, value: int) -> None:
        self.requested_width = value

    @torch.no_grad()
    def norm(self) -> torch.Tensor:
        return self.proj.weight.norm()

"""


def test_a_custom_autograd_function_and_base_class_calls_are_accepted():
    block = CUSTOM_FUNCTION + GOOD.replace(f"class {CLASS}(nn.Module):", f"class {CLASS}(Base):").replace(
        "super().__init__()\n        self.proj = nn.Linear(d_model, d_model)", "Base.__init__(self, d_model)").replace(
        "return self.proj(x)",
        "assert type(x) is torch.Tensor and isinstance(x, (type(x), Base)), type(self).__name__\n"
        "        helper: Base = self\n"
        "        return Scale.apply(Base.forward(self, x), 2.0) + scale(super(Base, self).forward(x), Base.SCALE)")
    report = policy(block)
    assert report.ok, report.violations


def test_the_forbidden_attributes_that_nn_classes_define_stay_forbidden_on_self():
    """``self.seed = seed`` names the block's own value; ``self.compile()`` is nn.Module's method."""
    import torch

    from harness.trusted.policy import FORBIDDEN_ATTRIBUTES, MODULE_METHODS

    defined = set()
    for value in vars(torch.nn).values():
        if isinstance(value, type) and issubclass(value, torch.nn.Module):
            defined |= set(dir(value))
    assert FORBIDDEN_ATTRIBUTES & defined <= MODULE_METHODS


def _idiom_candidates():
    import importlib.util

    from harness.trusted.frameworks import REPO_ROOT

    path = REPO_ROOT / "results" / "false_rejections" / "idioms" / "candidates.py"
    spec = importlib.util.spec_from_file_location("idiom_candidates", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CANDIDATES


def test_every_idiom_of_the_sweep_meant_to_pass_passes_the_static_policy():
    """``results/false_rejections/idioms``: ordinary idioms of attention code; the gate's share of the sweep
    (``run.py``, about a minute) is in its recorded results, the policy's and the loader's resolution against the
    installed torch are checked here on every run."""
    from harness.sandbox.loader import PolicyViolation, check_module_attributes
    from harness.trusted.evaluate import static_gate

    refused = {}
    for c in _idiom_candidates():
        seed = FRAMEWORKS[c.framework].seed_source()
        parts = program.split(seed)
        spliced = program.splice(seed, parts.head + c.block + parts.tail)
        verdict = static_gate(c.framework, spliced)
        if verdict is None:
            try:
                check_module_attributes(spliced)
            except PolicyViolation as exc:
                verdict = ("policy", str(exc))
        if verdict is not None and c.deliberate is None:
            refused[c.name] = verdict[1]
    assert not refused, refused


def test_the_private_attributes_of_nn_module_are_all_known():
    """What the policy refuses on self (the table's ``MODULE_PRIVATE``), against the installed torch's nn.Module as it
    is defined: in a process of its own, since torch.compile marks the class at run time
    (``___needs_generation_tag_patch``)."""
    import json
    import subprocess
    import sys

    from harness.trusted.api_table import MODULE_PRIVATE

    listed = subprocess.run([sys.executable, "-c", "import json, torch.nn as nn; print(json.dumps(sorted("
                             "{n for n in dir(nn.Module) if n.startswith('_') and not n.endswith('__')} | "
                             "{n for n in vars(nn.Linear(2, 2)) if n.startswith('_')})))"],
                            capture_output=True, text=True, check=True, timeout=120)
    installed = set(json.loads(listed.stdout))
    assert installed <= MODULE_PRIVATE, sorted(installed - MODULE_PRIVATE)


@pytest.mark.parametrize("body,fragment", [
    ("F.GRID_SAMPLE_INTERPOLATION_MODES['calls'] = 1", "is a dict of the module's own"),
    ("n = len(torch.fft.common_args)", "is a dict of the module's own"),
    ("nn.Module.train(F.softmax, False)", "may only be called with self as its first argument"),
    ("t = nn.Module.train", "may only be called with self as its first argument"),
    ("from torch.nn import Module\n        Module.train(F.softmax, False)", "Module.train may only be called with self"),
])
def test_what_only_the_installed_torch_tells_is_refused_before_the_program_runs(body, fragment):
    """The loader resolves each chain from a module, and each name an import binds, against the installed modules: a
    table of torch's own, and an nn class's method called on something other than self, are known only there."""
    from harness.sandbox.loader import PolicyViolation, check_module_attributes

    source = program.split(SEED).head + GOOD.replace("return self.proj(x)", body + "\n        return self.proj(x)") \
        + program.split(SEED).tail
    with pytest.raises(PolicyViolation, match=fragment):
        check_module_attributes(source)


def test_nn_methods_called_with_self_and_module_functions_stay_allowed():
    from harness.sandbox.loader import check_module_attributes

    body = "nn.Module.train(self, True)\n        y = F.softmax(x, -1)\n        z = torch.fft.rfft(x, dim=1)"
    source = program.split(SEED).head + GOOD.replace("return self.proj(x)", body + "\n        return self.proj(x)") \
        + program.split(SEED).tail
    check_module_attributes(source)


@pytest.mark.parametrize("init,body,fragment", [
    # torch's own lookups by name: through them a name computed at run time ("_" * 2 + "class" + "_" * 2) handed a
    # block its class, and every exemption for self then applied to any object
    ("", "w = nn.LSTM.all_weights.fget(self)", "attribute 'fget' is not allowed"),
    ("self.bag = nn.ParameterDict()", "", "torch.nn.ParameterDict is not in the table"),
    ("k = '_' * 2\nself.register_buffer(k + 'del' + k, torch.zeros(1))", "", "the name given to register_buffer"),
    ("", "nn.utils.parametrize.register_parametrization(self, '_' * 2 + 'bool', nn.Identity())",
     "the name given to register_parametrization"),
    ("", "nn.utils.parametrize.register_parametrization(self.proj, tensor_name=str(x), parametrization=nn.Identity())",
     "the name given to register_parametrization"),
    ("names = ('w', torch.zeros(1))\nself.register_buffer(*names)", "", "the name given to register_buffer"),
    ("for name in ('mask', '_' + '_del__'):\n    self.register_buffer(name, None)", "",
     "the name given to register_buffer"),
    ("self.keep = self.register_buffer", "", "register_buffer may only be called directly"),
    ("self.register_buffer('_version', None)", "", "the name given to register_buffer"),
])
def test_no_name_computed_at_run_time_reaches_a_lookup_by_name(init, body, fragment):
    assert_refused(good_with(init=init, body=body), fragment)


def test_names_written_out_may_be_registered_in_loops_and_f_strings():
    block = GOOD.replace("        self.proj = nn.Linear(d_model, d_model)",
                         "        self.proj = nn.Linear(d_model, d_model)\n"
                         "        for name in ('w_q', 'w_k'):\n            self.add_module(name, nn.Linear(d_model, d_model))\n"
                         "        for i in range(2):\n            self.register_buffer(f'mask_{i}', torch.ones(i + 1))\n"
                         "        self.register_buffer('scale_' + str(d_model), torch.ones(1))\n"
                         "        self.register_parameter(name='gain', param=nn.Parameter(torch.ones(1)))\n"
                         "        nn.utils.parametrize.register_parametrization(self.proj, 'weight', nn.Identity())")
    assert policy(block).ok, policy(block).violations


@pytest.mark.parametrize("block,fragment", [
    # each of these put an object other than the instance where the policy treats a name as self
    (good_with("property = staticmethod\n\n\n"), "'property' is a builtin, which the policy relies on"),
    (good_with(methods="    property = staticmethod\n\n"), "'property' is a builtin, which the policy relies on"),
    (good_with("tuple = list\nSTORE = tuple()\n\n\n"), "'tuple' is a builtin"),
    (good_with("def grab():\n    return Poker\n\n\nclass Poker(nn.Module):\n    pass\n\n\n"),
     "the class Poker may only be instantiated"),
    (good_with("class mem:\n    setter = staticmethod\n\n\nclass Poker(nn.Module):\n    @mem.setter\n    def get(self):\n"
            "        return self\n\n    def mem(self):\n        return 1\n\n\n"), "'mem' names a class of the block"),
    (good_with(methods="    @scale.setter\n    def width(self, v):\n        self.w = v\n\n    @property\n"
                    "    def scale(self):\n        return 1\n\n"), "the name 'self' may only be the first parameter"),
    (good_with("class Peek(torch.autograd.Function):\n    def forward(ctx, a):\n        return a.clone()\n\n"
            "    @staticmethod\n    def backward(ctx, g):\n        return g\n\n\n"),
     "every method of the autograd Function Peek must be a @staticmethod"),
    (good_with("import typing\n\n\n", body="t = typing.Type.mro"), "typing.Type may only be used as it is"),
    (good_with("from typing import Iterable\n\n\n", body="Iterable.register(float)"),
     "typing.Iterable may only be used as it is"),
    (good_with(body="try:\n    x.nothing_here\nexcept AttributeError as e:\n    o = e.obj"), "attribute 'obj' is not allowed"),
    (good_with(body="s = self.untyped_storage()"), "attribute 'untyped_storage' is not allowed"),
    (good_with(body="c = self._forward_cls"), "private attribute '_forward_cls' is allowed on self only where"),
    (good_with(body="p = 'torch.nn.functional.softmax.__globals__'"), "names a special attribute (__globals__)"),
    (good_with(init="k = 'cay' + 'ley'\nnn.utils.parametrizations.orthogonal(self.proj, 'weight', '_' + k)"),
     "the name given to orthogonal"),
    (good_with(methods="    def steps(self):\n        with torch.no_grad():\n            yield 1\n\n"),
     "generators (yield) are not allowed"),
    (good_with(methods="    def state_dict(self, *args, **kwargs):\n        return {}\n\n"),
     "may not define 'state_dict': it is torch.nn's own"),
    (good_with(init="self.parameters = None"), "assigning 'parameters' is not allowed"),
    (good_with(init="self.variable = 1", body="v = x.grad.variable"), "attribute 'variable' is neither in the table"),
])
def test_nothing_but_the_instance_is_ever_self(block, fragment):
    assert_refused(block, fragment)


def test_what_the_instance_rules_still_admit():
    block = good_with(
        '"""A docstring may name __init__ and __globals__."""\n\n\n',
        init="self.training = True\nself.seed = 3\nself._cache = None\n"
             "nn.utils.parametrizations.orthogonal(self.proj, 'weight', orthogonal_map='cayley')",
        body="g = torch.Generator()\ng.manual_seed(self.seed)\nself._cache = None if self._cache is None else x",
        methods="    def extra_repr(self):\n        return 'seeded'\n\n    @property\n    def scale(self):\n"
                "        return self.seed\n\n    @scale.setter\n    def scale(self, value):\n        self.seed = value\n\n")
    assert policy(block).ok, policy(block).violations


@pytest.mark.parametrize("block,fragment", [
    (good_with("class Cell(nn.LSTM):\n    def poke(self, names):\n        self._all_weights = names\n\n\n"),
     "attribute '_all_weights' is not allowed: it is torch.nn's own"),
    (good_with("class Cell(nn.RNNBase):\n    pass\n\n\nclass Deeper(Cell):\n    def poke(self):\n"
            "        self._flat_weights_names = ['w']\n\n\n"), "attribute '_flat_weights_names' is not allowed"),
    (good_with("class Cell(nn.MultiheadAttention):\n    def _reset_parameters(self):\n        pass\n\n\n"),
     "may not define '_reset_parameters'"),
    (good_with(init="self._buffers = {}"), "attribute '_buffers' is not allowed: it is torch.nn's own"),
])
def test_torch_s_private_names_are_refused_on_the_instances_they_belong_to(block, fragment):
    assert_refused(block, fragment)


def test_a_module_of_the_block_may_use_the_private_names_of_other_torch_classes():
    block = good_with(init="self._size = d_model\nself._u = None\nself._reset_parameters()",
                   methods="    def _reset_parameters(self):\n        nn.init.zeros_(self.proj.bias)\n\n")
    assert policy(block).ok, policy(block).violations


@pytest.mark.parametrize("block,fragment", [
    # a third review: more ways to bind another object where the policy sees self, or to reach a torch class
    (good_with("def grab(c):\n    return c\n\n\n@grab\nclass Poker(nn.Module):\n    pass\n\n\n"),
     "class Poker: class decorators are not allowed"),
    (good_with(methods="    @torch.no_grad(staticmethod)\n    def mem(self):\n        return self\n\n"),
     "the name 'self' may only be the first parameter"),
    (good_with("class Setter(nn.Module):\n    def poke(self, names):\n        self._all_weights = names\n\n\n"
            "class Cell(nn.LSTM, Setter):\n    pass\n\n\n"), "attribute '_all_weights' is not allowed"),
    (good_with("class Setter(nn.Module):\n    def poke(self):\n        return 1\n\n\n",
            body="Setter.poke(self)"), "Setter.poke(self, ...) may only be called in a class derived from Setter"),
    (good_with(methods="    @property\n    def mem(self):\n        return 1\n\n    @mem.setter\n    def grab(self, v):\n"
                    "        self.v = v\n\n"), "the name 'self' may only be the first parameter"),
    (good_with("def swap(f):\n    return f\n\n\n",
            methods="    @property\n    def mem(self):\n        return 1\n\n    @swap\n    def mem(a):\n        return a\n\n"
                    "    @mem.setter\n    def mem(self, v):\n        self.v = v\n\n"),
     "the name 'self' may only be the first parameter"),
    (good_with(body="torch = 1"), "'torch' names an import: use another name"),
    (good_with(methods="    def nn(self):\n        return 1\n\n"), "'nn' names an import: use another name"),
    (good_with(init="self.lazy = nn.LazyLinear(4)", body="self.lazy.weight.bias = 1"),
     "assigning to the attribute 'bias' of anything but self"),
    (good_with(init="self.lazy = nn.LazyLinear(4)", body="c = self.lazy.cls_to_become"),
     "attribute 'cls_to_become' is neither in the table"),
    (good_with(body="nn.RNNBase.all_weights.__init__(None)"), "__init__ may only be called as super().__init__"),
    (good_with(body="p = 'torch.nn.functional.softmax.__globals__'"), "names a special attribute (__globals__)"),
])
def test_a_third_review_s_ways_past_the_policy_are_refused(block, fragment):
    assert_refused(block, fragment)


def test_what_the_third_review_s_rules_still_admit():
    block = good_with(
        "class CausalConv(nn.Conv1d):\n    def forward(self, x):\n        return self._conv_forward(x, self.weight, "
        "self.bias)\n\n\nclass Base(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
        "        self.d = d\n\n    def scale(self):\n        return 1.0\n\n\n",
        init="self.conv = CausalConv(d_model, d_model, 3)",
        body="self.proj.eval()\nself.proj.train()\nif x.dim() != 3:\n    raise ValueError('forward takes (batch, "
             "length, width); see __call__')",
        methods="    @torch.autocast('cpu', dtype=torch.bfloat16, enabled=False)\n    def mixed(self, x):\n"
                "        return x\n\n    @torch.inference_mode(False)\n    def plain(self, x):\n        return x\n\n")
    block = block.replace(f"class {CLASS}(nn.Module):", f"class {CLASS}(Base):").replace(
        "super().__init__()\n        self.proj", "Base.__init__(self, d_model)\n        self.proj", 1)
    assert policy(block).ok, policy(block).violations


def test_an_annotation_may_only_name_a_type():
    report = policy(good_with("def grab(c):\n    return int\n\n\n", body="def probe(a: grab(nn.Linear)):\n    return a"))
    assert any("an annotation may only name a type" in v for v in report.violations), report.violations
    typed = good_with(methods="    def shapes(self, x: torch.Tensor, n: Optional[int] = None, m: int | None = None,\n"
                           "               k: 'torch.Tensor' = None, p: Literal['a', 'b'] = 'a') -> tuple[int, int]:\n"
                           "        return (1, 2)\n\n")
    typed = "from typing import Literal, Optional\n\n\n" + typed
    assert policy(typed).ok, policy(typed).violations


@pytest.mark.parametrize("block,fragment", [
    # a fourth review: what a class body, a default or a decorator evaluates, and state kept on torch's functions
    (good_with("class Poker(nn.Module):\n    def mem(self):\n        return 1\n\n    grab = mem\n\n\n"),
     "the body of Poker may not name a function or method of the block"),
    (good_with(methods="    def mem(self):\n        return 1\n\n    def probe(self, x, grab=mem):\n        return x\n\n"),
     "a default argument of probe may not name a function of the block"),
    (good_with("import functools\n\n\n", methods="    @functools.partial(classmethod)\n    def sneak(cls, t):\n"
                                              "        return t\n\n"), "a decorator may only be staticmethod"),
    (good_with("GRAB = staticmethod\n\n\n"), "module-level Assign statement is not allowed"),
    (good_with(body="torch.autograd.Function.save_for_backward(F.softmax, x)"),
     "torch.autograd.Function may only be used as it is"),
    (good_with("class Stash(torch.autograd.Function):\n    @staticmethod\n    def forward(target, value):\n"
            "        target.stash = value\n        return value.clone()\n\n    @staticmethod\n"
            "    def setup_context(ctx, inputs, output):\n        pass\n\n\n"),
     "assigning to the attribute 'stash' of anything but self"),
    (good_with("class Lazy(nn.LazyLinear):\n    def kind(self):\n        return self.cls_to_become\n\n\n"),
     "attribute 'cls_to_become' is not allowed: it holds a torch class"),
    (good_with(body="g = nn.utils.parametrize.cached().func()\ng.send(None)"), "attribute 'send' is neither in the table"),
])
def test_a_fourth_review_s_ways_past_the_policy_are_refused(block, fragment):
    assert_refused(block, fragment)


def test_an_exception_class_may_be_caught():
    from harness.sandbox.loader import check_module_attributes

    block = good_with("import einops\n\n\n", body="try:\n    y = einops.rearrange(x, 'b t d -> b d t')\n"
                                               "except (einops.EinopsError, ValueError):\n    y = x")
    assert policy(block).ok, policy(block).violations
    check_module_attributes(program.split(SEED).head + block + program.split(SEED).tail)


@pytest.mark.parametrize("block,fragment", [
    # a fifth review: stores that hid what they put on self, typing names held in variables, inherited setup_context
    (good_with("class Other(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.act = nn.Identity()\n\n\n", body="(self.act,) = (F.softmax,)\nself.act.stash = x.detach()"),
     "assigning to the attribute 'stash' of anything but self"),
    (good_with(init="self.act = nn.Identity()", body="for self.act in (F.softmax,):\n    self.act.stash = 1"),
     "assigning to the attribute 'stash' of anything but self"),
    (good_with("from typing import Iterable\n\n\n", body="kinds = Iterable"), "typing.Iterable may only be used as it is"),
    (good_with("import typing\n\n\n", body="kinds = typing.Mapping"), "typing.Mapping may only be used as it is"),
    (good_with("class Base(torch.autograd.Function):\n    @staticmethod\n    def setup_context(ctx, inputs, output):\n"
            "        pass\n\n\nclass Stash(Base):\n    @staticmethod\n    def forward(ctx, value):\n"
            "        ctx.stash = value.detach()\n        return value.clone()\n\n\n"),
     "assigning to the attribute 'stash' of anything but self"),
])
def test_a_fifth_review_s_ways_past_the_policy_are_refused(block, fragment):
    assert_refused(block, fragment)


def test_typing_and_functools_names_used_as_they_are_stay_allowed():
    block = good_with("import functools\nfrom typing import Optional, Tuple\n\n\n",
                   init="self.act = functools.partial(F.gelu, approximate='tanh')",
                   methods="    def shape(self, x: Optional[torch.Tensor] = None) -> Tuple[int, int]:\n"
                           "        n: Optional[int] = None\n        return (1, 2)\n\n")
    assert policy(block).ok, policy(block).violations


@pytest.mark.parametrize("block,fragment", [
    # a sixth review: a property beside a submodule, a subscripted typing alias, a Parameter's attributes
    (good_with(init="self.act = nn.Identity()", body="self.act.stash = x.detach()",
            methods="    @property\n    def act(self):\n        return F.softmax\n\n"),
     "assigning to the attribute 'stash' of anything but self"),
    (good_with("import typing\n\n\n", init="self.register = None", body="typing.Iterable[int].register(float)"),
     "typing.Iterable may only be used as it is"),
    (good_with("from typing import Iterable\n\n\n", init="self.register = None", body="Iterable[int].register(float)"),
     "typing.Iterable may only be used as it is"),
    (good_with(init="self.p = nn.Parameter(torch.zeros(1))", body="self.p.calls = 1"),
     "assigning to the attribute 'calls' of anything but self"),
])
def test_a_sixth_review_s_ways_past_the_policy_are_refused(block, fragment):
    assert_refused(block, fragment)


def test_type_checking_stays_a_plain_flag():
    block = "from typing import TYPE_CHECKING\n\n\n" + good_with(body="if TYPE_CHECKING:\n    pass")
    assert policy(block).ok, policy(block).violations
    block = "import typing\n\n\n" + good_with(body="if typing.TYPE_CHECKING:\n    pass")
    assert policy(block).ok, policy(block).violations


PRIVATE_HELPERS = ("class Rope(nn.Module):\n    _SCALE = 1.0\n\n    @staticmethod\n    def _half(x):\n"
                   "        return x\n\n"
                   "    def _rotate(self, x):\n        return x\n\n\n"
                   "class Projector(nn.Module):\n    def _project(self, x):\n        return x\n\n\n")

CLASSMETHOD_SUPER = ("class Base(nn.Module):\n    def mem(self):\n        return 1\n\n\n"
                     "class Helper(Base):\n    @classmethod\n    def sneak(cls, t):\n"
                     "        return super().mem()\n\n\n")


CLASSMETHOD_OF_A_BASE = ("class Helper(nn.Module):\n    SCALE = 1\n\n    @classmethod\n    def via(cls, t):\n"
                         "        return cls.SCALE\n\n\n"
                         "class Sub(Helper):\n    def SCALE(self):\n        return self\n\n\n")


@pytest.mark.parametrize("block,fragment", [
    # a ninth review: calls whose arguments the checks of lookups and classes did not see, super() with another first
    # argument than the instance, a torch property re-initialised, a context manager's generator driven by hand
    (good_with(body='f = getattr(x, "gi_frame", **dict())'), "getattr(...) takes its arguments written out"),
    (good_with(body='f = hasattr(x, *("numpy",))'), "hasattr(...) takes its arguments written out"),
    (good_with(body='k = type(*("N", (), dict()))'), "type(...) takes its arguments written out"),
    (good_with(CLASSMETHOD_SUPER), "super() may only be called in a method whose first parameter is self"),
    (good_with(body="f = lambda t: super().forward(t)"), "super() may only be called in a method"),
    (good_with(methods="    def outer(self):\n        def inner(t):\n            return super().forward(t)\n"
                       "        return inner\n\n"), "super() may only be called in a method"),
    (good_with(init="nn.GRU.all_weights.__init__(self)"), "where Base is a base of the class it is in"),
    (good_with(body="next(nn.utils.parametrize.cached().func())"), "attribute 'func' is not allowed"),
    (good_with(init="self.gen = None", body="next(nn.utils.parametrize.cached().gen)"),
     "attribute 'gen' is not allowed"),
    (good_with(body='f = getattr(x, "a b", None)'), "getattr is allowed only with a constant, non-underscore"),
    # a review of those fixes: cls is the subclass a classmethod is called on, where the name may be a method; a
    # torch layer's __init__ stores on self too (nn.TransformerEncoderLayer's activation, here F.relu)
    (good_with(CLASSMETHOD_OF_A_BASE), "a class derives from Helper; read its constants as Helper.NAME"),
    (good_with("class Layer(nn.TransformerEncoderLayer):\n    def stash(self, t):\n"
               "        self.activation.stash = t\n\n\n", init="self.activation = nn.GELU()"),
     "assigning to the attribute 'stash' of anything but self"),
])
def test_a_ninth_review_s_ways_past_the_policy_are_refused(block, fragment):
    assert_refused(block, fragment)


@pytest.mark.parametrize("block,fragment", [
    # a private name the block defines reads torch's where torch's class has it: refused as before
    (good_with("class Own(nn.Module):\n    def _flat_weights(self):\n        return 1\n\n\n",
               init="self.rnn = nn.GRU(4, 4)", body="w = self.rnn._flat_weights"),
     "private attribute '_flat_weights' is allowed only on self"),
    (good_with(PRIVATE_HELPERS, body="w = x._rotate"), "private attribute '_rotate' is allowed only on self"),
    # a torch mode outside staticmethod makes a function again, bound to the instance
    (good_with(methods="    @torch.no_grad()\n    @staticmethod\n    def causal(t):\n        return t\n\n",
               body=f"mask = {CLASS}.causal(x)"), "may only be called with self as its first argument"),
])
def test_private_names_and_staticmethods_keep_their_limits(block, fragment):
    assert_refused(block, fragment)


def test_refusals_say_what_to_write_instead_and_where():
    from harness.sandbox.loader import PolicyViolation, check_module_attributes

    assert_refused(good_with(init="self.w = nn.Parameter(torch.zeros(1))\nself.w.requires_grad = False"),
                   "call t.requires_grad_(False)")
    assert_refused(good_with(body="flag = torch.jit.is_scripting()"), "drop torch.jit")
    assert_refused(good_with(body="with torch.set_grad_enabled(False):\n    pass"), "use with torch.no_grad()")
    source = with_block(good_with(body="kind = nn.Linear"))
    line = source.splitlines().index("        kind = nn.Linear") + 1
    with pytest.raises(PolicyViolation, match=f"^line {line}: torch.nn.Linear is a class"):
        check_module_attributes(source)


def test_what_the_ninth_review_s_rules_still_admit():
    from harness.sandbox.loader import check_module_attributes

    subclass = ("class Base(nn.Module):\n    def forward(self, x):\n        return x\n\n\n" + GOOD.replace(
        f"class {CLASS}(nn.Module):", f"class {CLASS}(Base):").replace(
        "super().__init__()", f"super({CLASS}, self).__init__()").replace(
        "return self.proj(x)", "return super().forward(self.proj(x))"))
    blocks = [
        subclass,
        good_with(methods="    @property\n    def width(self):\n        return super().extra_repr()\n\n"),
        GOOD.replace("super().__init__()", "nn.Module.__init__(self)"),
        # nanoGPT's own test for the fused kernel: hasattr of a module reads the module's function
        good_with(init='self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention")'),
        good_with(init="self.func = nn.GELU()", body="x = self.func(x)\ndevice = next(self.parameters()).device"),
        "class Base(torch.nn.Module):\n    pass\n\n\n"
        + GOOD.replace(f"class {CLASS}(nn.Module):", f"class {CLASS}(Base):"),
        GOOD.replace(f"class {CLASS}(nn.Module):", f"class {CLASS}(torch.nn.Module):").replace(
            "super().__init__()", "nn.Module.__init__(self)"),
        # private names of the block's own classes, through super(), the class or a module the block builds
        PRIVATE_HELPERS + GOOD.replace(f"class {CLASS}(nn.Module):", f"class {CLASS}(Projector):").replace(
            "self.proj = nn.Linear(d_model, d_model)", "self.proj = nn.Linear(d_model, d_model)\n"
            "        self.rope = Rope()").replace(
            "return self.proj(x)", "x = super()._project(self.rope._rotate(x)) * Rope._SCALE\n"
            "        x = Projector._project(self, Rope._half(x))\n        return self.proj(x)"),
        # a classmethod of a class nothing derives from reads its constants; a submodule's attribute may be set
        # where no class derives from a torch layer
        good_with("class Helper(nn.Module):\n    SCALE = 2.0\n\n    @classmethod\n    def make(cls):\n"
                  "        return cls.SCALE\n\n\n", init="self.drop = nn.Dropout(0.1)\nself.drop.p = 0.2"),
        # a staticmethod under a torch mode is a staticmethod all the same
        good_with(methods="    @staticmethod\n    @torch.no_grad()\n    def causal(t):\n"
                          "        return torch.ones(t, t).tril()\n\n", body=f"mask = {CLASS}.causal(x.shape[1])"),
    ]
    for block in blocks:
        assert policy(block).ok, (block, policy(block).violations)
        check_module_attributes(with_block(block))


def test_a_block_nested_past_the_parser_s_depth_is_a_syntax_error_not_the_evaluator_s_failure():
    from harness.trusted.evaluate import NESTED_TOO_DEEPLY, Reason, static_gate

    problem = static_gate("ttr", with_block(good_with(body="z = " + "+".join(["x"] * 5000))))
    assert problem == (Reason.SYNTAX, NESTED_TOO_DEEPLY)

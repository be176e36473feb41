"""The security corpus: candidates that try to reach the host or touch their own score, one per way in.

Each block is a legitimate ttr attention (the seed's projections, causal softmax attention) with one payload added
to ``forward``. A payload that ran would leave a trace that ``tests/test_security.py`` looks for from outside:
the marker file ``{marker}``, the secret written into it, the parent killed, the score moved. ``{marker}`` and
``{secret_env}`` are filled in per test.
"""

import os
from dataclasses import dataclass

from adversarial import CLASS, FRAMEWORK, SEED, TRAINED_SEED  # noqa: F401 - the adversarial corpus's seed
from harness.trusted import program
from harness.trusted.profiles import get_profile

# The profile the tests' evaluations run under (``conftest.smoke_env``): smoke-short, on the CPU (smoke for a third of
# its steps: the suite checks every path of the evaluator, not how far a model learns); ``harness gpu-check`` runs the
# security corpus and the confinement tests again under smoke-cuda, so that they hold on a GPU machine too.
PROFILE = os.environ.get("HARNESS_TEST_PROFILE", "smoke-short")
DEVICE = get_profile(PROFILE).device

BLOCK = '''
class {cls}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
{init}
    def forward(self, x):
{payload}
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.n_heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        y = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))
'''


def past_the_static_policy(monkeypatch) -> None:
    """Switch the evaluator's static policy off, as if a candidate had found a hole in it, to show the layers
    behind it. Such a block reaches a module by a name the checks cannot read (``getattr(torch, "o" + "s")``):
    the loader, in the sandbox, reads a lookup by a constant name as the attribute it names."""
    from harness.trusted import evaluate
    from harness.trusted.policy import PolicyReport

    monkeypatch.setattr(evaluate, "check_block", lambda *args, **kwargs: PolicyReport())


@dataclass(frozen=True)
class Attack:
    name: str
    category: str
    payload: str  # statements for the top of forward, 8 spaces deep; {marker} and {secret_env} are filled in
    reason: str = "policy"
    preamble: str = ""  # top-level code before the class (helpers, subclasses)
    init: str = ""  # statements for the end of __init__, 8 spaces deep

    def source(self, marker: str, secret_env: str) -> str:
        payload = self.payload.format(marker=marker, secret_env=secret_env)
        body = "\n".join("        " + line for line in payload.splitlines())
        init = "".join("        " + line + "\n" for line in self.init.splitlines())
        block = self.preamble.format(marker=marker) + BLOCK.format(cls=CLASS, payload=body, init=init)
        parts = program.split(SEED)
        return parts.head + block + parts.tail


ATTACKS = [
    # commands
    Attack("system_through_torch_os", "commands", 'torch.os.system("touch {marker}")'),
    Attack("system_through_typing_sys_modules", "commands", 'typing.sys.modules["os"].system("touch {marker}")',
           preamble="import typing\n"),
    Attack("system_through_getattr_on_a_module", "commands", 'getattr(torch, "os").system("touch {marker}")'),
    Attack("system_through_a_submodule", "commands", 'torch.serialization.os.system("touch {marker}")'),
    Attack("system_through_partial", "commands", 'functools.partial(torch.os.system, "touch {marker}")()',
           preamble="import functools\n"),
    Attack("system_through_a_module_attribute_of_a_module", "commands",
           'torch.autograd.function.warnings.sys.modules["os"].system("touch {marker}")'),
    Attack("string_annotation_evaluated_by_typing", "commands", "typing.get_type_hints(probe)",
           preamble="import typing\n\n\ndef probe(a: \"(__import__('os').system('touch {marker}'), int)[1]\"):\n"
                    "    return a\n\n"),
    Attack("getattr_bound_to_a_name", "commands",
           'g = getattr\ng(g(g(F.softmax, "__glo" + "bals__")["torch"], "o" + "s"), "system")("touch {marker}")'),
    Attack("code_of_a_torch_function_replaced_through_wraps", "commands",
           'functools.wraps(probe, assigned=("__code__",), updated=())(torch.is_tensor)\ntorch.is_tensor(x)',
           preamble="import functools\n\n\ndef probe(a):\n    return os.system(\"touch {marker}\")\n\n\n"
                    "def unused(os):\n    return os\n\n\n"),
    Attack("builtins_through_a_module_a_call_returned", "commands",
           'm = torch.get_device_module("cpu").torch.glob.re.enum.bltns\n'
           'm.getattr(m, "__imp" + "ort__")("os").system("touch {marker}")'),
    Attack("torch_class_patched_through_mro", "patching", 'self.T = torch.Tensor.mro()[0]\nself.T.softmax = None'),
    Attack("state_stored_on_a_torch_function", "patching", 'self.sm = F.softmax\nself.sm.store = x.detach()'),
    Attack("private_state_dict_hook_on_self", "patching",
           "self._register_state_dict_hook(lambda m, d, p, meta: [v.zero_() for v in d.values()])"),
    Attack("backward_through_the_caller_s_graph", "patching",
           "x.backward(torch.full_like(x, 1e3), retain_graph=True)"),
    Attack("store_in_a_table_of_torch", "patching", 'F.GRID_SAMPLE_INTERPOLATION_MODES["calls"] = 1'),
    Attack("nn_method_run_on_a_torch_function", "patching", "nn.Module.train(F.softmax, False)"),
    Attack("globals_read_through_a_match_pattern", "commands",
           'match torch.is_tensor:\n    case object(__globals__=g):\n        g["os"].system("touch {marker}")'),
    Attack("globals_read_through_a_format_field", "secrets",
           'n = "{{0.__globals__[os].environ[{secret_env}]}}".format(torch.is_tensor)\n'
           'torch.tensor(list(n.encode()), dtype=torch.uint8)'),
    # files: Python-level and C-level writes, reads
    Attack("open_builtin", "files", 'open("{marker}", "w").write("x")'),
    Attack("numpy_tofile", "files", 'x.detach().numpy().tofile("{marker}")'),
    Attack("numpy_dump", "files", 'x.detach().numpy().dump("{marker}")'),
    Attack("torch_package_exporter", "files", 'torch.package.PackageExporter("{marker}").close()'),
    Attack("torch_save", "files", 'torch.save(x, "{marker}")'),
    Attack("torch_imported_as_self", "files", 'import torch as self\nself.save(x, "{marker}")'),
    Attack("module_imported_inside_a_function", "files",
           'def exporter():\n    import torch as t2\n    return t2\nexporter().package.PackageExporter("{marker}").close()'),
    Attack("read_a_host_file", "files", 'self.leak = torch.from_file("/etc/hostname", size=1)'),
    # secrets
    Attack("secret_through_torch_os_environ", "secrets",
           'torch.tensor(list(torch.os.environ.get("{secret_env}", "").encode()), dtype=torch.uint8)'),
    # network
    Attack("socket_through_sys_modules", "network",
           's = typing.sys.modules["socket"].socket()\ns.connect(("127.0.0.1", 9))', preamble="import typing\n"),
    # signals to the parent
    Attack("kill_the_parent", "signals", "torch.os.kill(torch.os.getppid(), 9)"),
    # forging the result
    Attack("write_the_result_file", "forging",
           'torch.os.replace("{marker}", typing.sys.argv[-1])', preamble="import typing\n"),
    # patching the loss, a frozen module or the scorer
    Attack("patch_the_loss_directly", "patching", "F.cross_entropy = lambda *a, **k: torch.zeros(())"),
    Attack("patch_the_loss_through_an_alias", "patching", "f = F\nf.cross_entropy = lambda *a, **k: torch.zeros(())"),
    Attack("patch_a_frozen_class_through_an_alias", "patching", "ln = nn.LayerNorm\nln.forward = lambda s, a: a * 0"),
    Attack("patch_a_frozen_class_through_type", "patching", "type(self.out).forward = lambda s, a: a * 0"),
    Attack("patch_and_restore_around_a_step", "patching",
           "saved = F.cross_entropy\nF.cross_entropy = lambda *a, **k: torch.zeros(())\nF.cross_entropy = saved"),
    Attack("patch_during_backward", "patching", "x.register_hook(lambda g: g * 0)"),
    # the autograd graph from the attention's input reaches the frozen model's parameters (a hidden optimizer)
    Attack("walk_the_autograd_graph_to_frozen_parameters", "patching",
           "for node, _ in x.grad_fn.next_functions:\n    pass"),
    Attack("patch_a_torch_class_through_a_method_called_on_it", "patching", "Poker.poke(torch.Tensor)",
           preamble="class Poker(nn.Module):\n    def poke(self):\n        self.softmax = None\n\n\n"),
    Attack("patch_a_torch_class_stored_on_self", "patching", "self.t = torch.Tensor\nself.t.softmax = None"),
    Attack("patch_a_torch_class_through_a_method_named_like_a_constant", "patching", "Poker.poke(torch.Tensor)",
           preamble="class Holder(nn.Module):\n    poke = 1\n\n\nclass Poker(nn.Module):\n    def poke(self):\n"
                    "        self.softmax = None\n\n\n"),
    Attack("patch_a_torch_class_through_a_classmethod", "patching", "Poker().sneak()",
           preamble="class Poker(nn.Module):\n    def poke(self):\n        self.softmax = None\n\n"
                    "    @classmethod\n    def sneak(cls):\n        cls.poke(torch.Tensor)\n\n\n"),
    Attack("patch_the_loss_through_a_module_bound_to_a_name", "patching",
           "f = torch.nn.functional\nf.cross_entropy = lambda *a, **k: torch.zeros(())"),
    Attack("patch_through_the_context_of_an_autograd_function", "patching", "Sneaky.forward(torch.Tensor, x)",
           preamble="class Sneaky(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, a):\n"
                    "        ctx.softmax = None\n        return a\n\n\n"),
    Attack("import_the_scorer", "patching", "harness.trusted.scoring.score = lambda *a, **k: 9.0",
           preamble="import harness.trusted.scoring\n"),
    Attack("setattr_on_a_module", "patching", 'setattr(F, "cross_entropy", None)'),
    Attack("change_a_process_wide_setting", "patching", 'torch.set_float32_matmul_precision("medium")'),
    # tensor subclasses
    Attack("return_a_tensor_subclass", "subclass", "return x.as_subclass(Sneaky)",
           preamble="class Sneaky(torch.Tensor):\n    pass\n\n"),
    Attack("define_torch_function", "subclass", "pass",
           preamble="class Sneaky(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, f, t, a=(), k=None):\n"
                    "        return super().__torch_function__(f, t, a, k)\n\n"),
    Attack("return_a_parameter", "subclass", "return nn.Parameter(x)"),
    # frame walking
    Attack("getframe_through_an_alias", "frames", "s = typing.sys\nframe = s._getframe(1)",
           preamble="import typing\n"),
    Attack("frames_walked_through_match_patterns", "frames",
           'match typing.cast:\n    case object(__globals__=g):\n        pass\n'
           'match g["sys"]:\n    case object(_getframe=getframe):\n        pass\n'
           'match getframe(1):\n    case object(f_back=back, f_locals=names):\n        pass',
           preamble="import typing\n"),
    Attack("frame_through_a_traceback", "frames",
           "try:\n    raise ValueError()\nexcept ValueError as e:\n    frame = e.__traceback__.tb_frame.f_back"),
    Attack("private_internals_through_an_alias", "frames", "t = torch\nt._C._set_grad_enabled(False)"),
    # reading the scoring split
    Attack("read_the_validation_tokens", "scoring_split",
           'self.val = torch.load(torch.os.environ["HARNESS_CACHE"] + "/val.pt")'),
    # disabling an in-process guard
    Attack("disable_grad_globally", "guards", "torch.set_grad_enabled(False)"),
    Attack("audit_hook", "guards", "typing.sys.addaudithook(lambda *a: None)", preamble="import typing\n"),
    # A class in hand, through torch's lookups of an attribute by a name computed at run time: every exemption the
    # policy makes for self then applies to any object (each passed the static policy before the API table's review).
    Attack("class_through_a_property_getter", "commands",
           'k = "_" * 2\np = Poker()\np.poke([[k + "class" + k]])\ncls = nn.LSTM.all_weights.fget(p)[0][0]\n'
           'cls.poke(F.softmax, [[k + "globals" + k]])\ng = nn.LSTM.all_weights.fget(F.softmax)[0][0]\n'
           'g[k + "builtins" + k][k + "import" + k]("os").system("touch {marker}")',
           preamble="class Poker(nn.Module):\n    def poke(self, names):\n        self._all_weights = names\n\n\n"),
    Attack("class_through_a_parameter_dict", "files",
           'cls = Bag()["_" * 2 + "class" + "_" * 2]\ncls.write(cls.as_array(x.detach()), "{marker}")',
           preamble="class Bag(nn.ParameterDict):\n    def as_array(self):\n        return self.numpy()\n\n"
                    "    def write(self, path):\n        self.tofile(path)\n\n\n"),
    Attack("class_through_rnn_weight_names", "files",
           'cls = Cell("RNN_TANH", 1, 1).lookup("_" * 2 + "class" + "_" * 2)\n'
           'cls.write(cls.as_array(x.detach()), "{marker}")',
           preamble="class Cell(nn.RNNBase):\n    def lookup(self, name):\n        self._flat_weights_names = [name]\n"
                    "        self._init_flat_weights()\n        return self._flat_weights[0]\n\n"
                    "    def as_array(self):\n        return self.numpy()\n\n"
                    "    def write(self, path):\n        self.tofile(path)\n\n\n"),
    # ... and through Python's own rules: a rebound builtin, a typing alias, autograd's first argument. A storage's
    # type("os.system") imports and walks the dotted path, and the AttributeError it ends with holds the result.
    Attack("builtin_rebound_as_a_decorator", "commands",
           'try:\n    self.poker.mem(x.detach()).type("os.system")\nexcept AttributeError as e:\n'
           '    e.obj("touch {marker}")',
           preamble="property = staticmethod\n\n\nclass Poker(nn.Module):\n    @property\n    def mem(self):\n"
                    "        return self.untyped_storage()\n\n\n",
           init="self.poker = Poker()\nself.obj = None"),
    Attack("class_through_a_typing_alias", "commands",
           'try:\n    typing.Type.obj\nexcept AttributeError as e:\n    meta = e.obj\ncls = meta(self.poker)\n'
           'try:\n    cls.mem(x.detach()).type("os.system")\nexcept AttributeError as e:\n'
           '    e.obj("touch {marker}")',
           preamble="import typing\n\n\nclass Poker(nn.Module):\n    def mem(self):\n"
                    "        return self.untyped_storage()\n\n\n",
           init="self.poker = Poker()\nself.obj = None"),
    Attack("autograd_function_method_without_staticmethod", "commands", "x = Peek.apply(x)",
           preamble="class Peek(torch.autograd.Function):\n    def forward(self, a):\n"
                    "        cls = self._forward_cls\n        try:\n"
                    "            cls.mem(a.detach()).type(\"os.system\")\n        except AttributeError as e:\n"
                    "            cls.leaked(e)(\"touch {marker}\")\n        return a.clone()\n\n"
                    "    def backward(self, g):\n        return g\n\n    def mem(self):\n"
                    "        return self.untyped_storage()\n\n    def leaked(self):\n        return self.obj\n\n\n"),
    # ... and through what a decorator is handed or returns: the class itself, or a staticmethod named "self"
    Attack("class_decorator_gets_the_class", "commands", "p = Poker()",
           preamble="def grab(c):\n    try:\n        c.mem(torch.zeros(1)).type(\"os.system\")\n"
                    "    except AttributeError as e:\n        c.leak(e)(\"touch {marker}\")\n    return c\n\n\n"
                    "@grab\nclass Poker(nn.Module):\n    def mem(self):\n        return self.untyped_storage()\n\n"
                    "    def leak(self):\n        return self.obj\n\n\n"),
    Attack("decorator_called_with_staticmethod", "commands",
           'try:\n    self.poker.mem(x.detach()).type("os.system")\nexcept AttributeError as e:\n'
           '    self.poker.leak(e)("touch {marker}")',
           preamble="class Poker(nn.Module):\n    @torch.no_grad(staticmethod)\n    def mem(self):\n"
                    "        return self.untyped_storage()\n\n    @torch.no_grad(staticmethod)\n    def leak(self):\n"
                    "        return self.obj\n\n\n",
           init="self.poker = Poker()"),
    # ... and through what a class body or a decorator evaluates: a method's bare function, a wrapped classmethod
    Attack("method_taken_bare_in_the_class_body", "commands",
           'try:\n    Poker.grab(x.detach()).type("os.system")\nexcept AttributeError as e:\n'
           '    Poker.peek(e)("touch {marker}")',
           preamble="class Poker(nn.Module):\n    def mem(self):\n        return self.untyped_storage()\n\n"
                    "    def leak(self):\n        return self.obj\n\n    grab = mem\n    peek = leak\n\n\n",
           init="self.untyped_storage = None\nself.obj = None"),
    Attack("classmethod_wrapped_in_a_partial", "commands", "self.helper.sneak(x.detach())",
           preamble="import functools\n\n\nclass Helper(nn.Module):\n    def mem(self):\n"
                    "        return self.untyped_storage()\n\n    def leak(self):\n        return self.obj\n\n"
                    "    @functools.partial(classmethod)\n    def sneak(cls, t):\n        try:\n"
                    "            cls.mem(t).type(\"os.system\")\n        except AttributeError as e:\n"
                    "            cls.leak(e)(\"touch {marker}\")\n\n\n",
           init="self.helper = Helper()"),
    # A ninth review: a lookup by name with an empty keyword dictionary, which the rewrite into an attribute read did
    # not see; super() in a classmethod, which hands out the bases' methods unbound; a torch property re-initialised
    # with the block's module as its getter; a context manager's generator driven by hand, never leaving its block.
    Attack("lookup_by_name_with_empty_keywords", "commands",
           'f = getattr((i for i in ()), "gi_frame", **dict())\nb = getattr(f, "f_builtins", **dict())\n'
           'getattr(b["_" * 2 + "import" + "_" * 2]("o" + "s"), "system", **dict())("touch {marker}")'),
    Attack("super_in_a_classmethod", "files", 'Helper().sneak(x.detach(), "{marker}")',
           preamble="class Base(nn.Module):\n    def unused(self):\n        self.numpy = None\n"
                    "        self.tofile = None\n\n"
                    "    def as_array(self):\n        return self.numpy()\n\n"
                    "    def write(self, path):\n        self.tofile(path)\n\n\n"
                    "class Helper(Base):\n    @classmethod\n    def sneak(cls, t, path):\n"
                    "        super().write(super().as_array(t), path)\n\n\n"),
    Attack("torch_property_reinitialised", "patching", "pass", init="nn.GRU.all_weights.__init__(self)"),
    Attack("context_manager_entered_by_hand", "guards", "next(nn.utils.parametrize.cached().func())"),
    # A review of the ninth's fixes: a classmethod's cls is the subclass it is called on, whose method of the same
    # name then ran with a generator, and with a frame, as its self; a torch layer's __init__ stores on self too, so a
    # name the block only ever gives a module it built held torch's function there.
    Attack("classmethod_cls_of_a_subclass", "commands",
           's = Sub()\nframe = s.via((i for i in range(1)))\n'
           's.via2(frame)["exec"]("import os; os.system(\'touch {marker}\')")',
           preamble="class Helper(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    "        self.gi_frame = None\n        self.f_builtins = None\n\n"
                    "    @staticmethod\n    def poke(t):\n        return t\n\n"
                    "    @staticmethod\n    def look(t):\n        return t\n\n"
                    "    @classmethod\n    def via(cls, t):\n        return cls.poke(t)\n\n"
                    "    @classmethod\n    def via2(cls, t):\n        return cls.look(t)\n\n\n"
                    "class Sub(Helper):\n    def poke(self):\n        return self.gi_frame\n\n"
                    "    def look(self):\n        return self.f_builtins\n\n\n"),
    Attack("torch_layer_attribute_taken_for_a_module", "patching", "self.layer.stash(x)",
           preamble="class Layer(nn.TransformerEncoderLayer):\n    def stash(self, t):\n"
                    "        self.activation.stash = t.detach()\n\n\n"
                    "class Decoy(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    "        self.activation = nn.GELU()\n\n\n",
           init='self.layer = Layer(d_model, n_heads, dim_feedforward=8, activation="relu")'),
]

BY_NAME = {attack.name: attack for attack in ATTACKS}

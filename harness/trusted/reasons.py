"""Reason codes: the one enumeration whose words appear in the evaluator, the ledger, the report and the prompt.

Each code comes with a short hint that tells the LLM what to do about it. A candidate's own failure
scores exactly 0.0; an ``infrastructure`` failure is the machine's, never the candidate's.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    OK = "ok"
    FROZEN_REGION = "frozen_region"
    SYNTAX = "syntax"
    POLICY = "policy"
    CRASH = "crash"
    SHAPE = "shape"
    CAUSALITY = "causality"
    BATCH_INDEPENDENCE = "batch_independence"
    STATEFULNESS = "statefulness"
    PARAM_PARITY = "param_parity"
    UNACCOUNTED_OP = "unaccounted_op"
    FLOP_PARITY = "flop_parity"
    COMPLEXITY = "complexity"
    RUNTIME = "runtime"
    MEMORY = "memory"
    NONFINITE = "nonfinite"
    DIVERGED = "diverged"
    TIMEOUT = "timeout"
    LEAK_AFTER_TRAINING = "leak_after_training"
    TAMPERING = "tampering"
    INFRASTRUCTURE = "infrastructure"


HINTS: dict[Reason, str] = {
    Reason.OK: "Valid. Improve the objective while keeping every constraint.",
    Reason.FROZEN_REGION: "Edit only the attention class between the EVOLVE-BLOCK markers; keep exactly one "
    "START and one END marker and leave every other line of the file as it was.",
    Reason.SYNTAX: "The block does not parse as Python. Return complete, valid code.",
    Reason.POLICY: "Use torch, math, typing and functools, each module only as module.name; assign attributes "
    "only on self; no file, OS, process or network access, no numpy, no tensor subclasses, no eval/exec, no dunder "
    "method but __init__. Keep the class name and constructor keywords.",
    Reason.CRASH: "The class raised an exception. Read the traceback and fix the code.",
    Reason.SHAPE: "forward(x) must return a tensor with exactly x's shape, dtype and device, for any "
    "batch size and any length from 1 to max_seq_len.",
    Reason.CAUSALITY: "Output at position t may depend only on inputs at positions <= t. Mask before "
    "normalising, use causal (cumulative) statistics only, left-pad convolutions, zero-pad FFTs to >= 2T.",
    Reason.BATCH_INDEPENDENCE: "Never mix information across the batch dimension (no batch means or norms).",
    Reason.STATEFULNESS: "forward must be a pure function of its input and parameters: do not store or update "
    "attributes, buffers or parameters during forward.",
    Reason.PARAM_PARITY: "Stay within the parameter budget: at most 5% more trainable attention parameters "
    "than the baseline, created in __init__, and no large non-parameter tensors.",
    Reason.UNACCOUNTED_OP: "Use standard torch tensor operations whose cost can be counted; the listed ops "
    "are not allowed.",
    Reason.FLOP_PARITY: "Forward+backward FLOPs per token must stay within 1.10x the baseline, with the same work "
    "in training and evaluation; elementwise, reduction, FFT and linear-algebra work counts too.",
    Reason.COMPLEXITY: "Cost grows too fast with sequence length: extrapolated to 4x the context, it would exceed "
    "the FLOP bound against the baseline.",
    Reason.RUNTIME: "A training step is too slow compared with the baseline; avoid Python loops over time "
    "steps and other serial work.",
    Reason.MEMORY: "Memory use is too high compared with the baseline; avoid materialising large tensors "
    "such as T x T x d intermediates.",
    Reason.NONFINITE: "The output, its gradient or the training loss became NaN or inf (the message says where). "
    "Stabilise: subtract row maxima before exp, keep "
    "decays in (0, 1], add eps to denominators.",
    Reason.DIVERGED: "The training loss diverged. Keep coefficient magnitudes O(1) and normalise.",
    Reason.TIMEOUT: "The evaluation exceeded its time limit. Remove slow or unbounded loops.",
    Reason.LEAK_AFTER_TRAINING: "The trained model's predictions change when future tokens change: the "
    "attention leaks information from the future.",
    Reason.TAMPERING: "The sandbox handed back a training record that is not what the harness writes (missing "
    "or non-numeric fields, other rungs). Do not write files, touch the result or reach the process.",
    Reason.INFRASTRUCTURE: "The evaluation failed for reasons outside the candidate (machine, memory of the "
    "host, data). It is not the candidate's fault.",
}

"""The training jobs of ``harness validate`` and the candidates they compare.

``run_training_job`` is the one function that runs one training job. Candidate code is hostile: it only ever runs
in ``python -m harness.sandbox objective`` subprocesses (own process group, hard wall-clock limit, memory cap);
this process reads text only.

Jobs run one after another by default. ``--jobs N`` runs N at a time: the independent seed jobs, and the
tuning trials in batches of N (TPE with a constant liar for the trials still running). Every job runs through
the evaluator's executor (``--executor``, default ``$HARNESS_EXECUTOR`` or local): on ``ray`` the seeds and
trials fan out over the cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.trusted import evaluate as evaluate_mod
from harness.trusted import executor as executor_mod
from harness.trusted import ledger as ledger_mod
from harness.trusted import program as program_mod
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import ConfigError, Profile
from harness.trusted.reasons import Reason
from harness.trusted.scoring import (MalformedRecord, checked_curve, objective_from_untrusted, printable, rungs_for,
                                     typed_runs)


# ----------------------------------------------------------------------------------------------------------
# One training job


@dataclass
class TrainJob:
    framework: str
    program_path: Path  # the spliced program (pristine outside + block); never imported here
    profile: Profile
    seed: int
    hparams: dict
    rungs: str  # "reference" (the reference rung: tuning), "objective" (what the objective needs), "ladder"
    fingerprint_id: str
    limit_s: float
    threads: int | None = None
    label: str = ""
    executor: str | None = None  # local | ray; None: $HARNESS_EXECUTOR, else local
    prune_above: dict[int, float] | None = None  # a median pruner's thresholds {step: loss} (tuning only)
    mixing: bool = False  # also measure the trained model's token-mixing matrices (one seed per side)


def job_rungs(job: TrainJob) -> list[tuple]:
    return rungs_for(job.profile, job.rungs)


def _trained_profile(job: TrainJob) -> Profile:
    """The profile the job's training must have followed: its hyperparameters over the profile's, so that its
    runs are checked against the steps and batch it was given."""
    budget = {k: int(job.hparams[k]) for k in ("steps", "batch_size_seqs") if k in job.hparams}
    return dataclasses.replace(job.profile, **budget)


# The reasons a training job can end with: the evaluator's, and a tuning run's early stop.
REASONS = {r.value for r in Reason} | {"pruned"}


def _tail(text) -> str:
    """The end of a sandbox's log or traceback, as printed and kept (``printable``)."""
    return printable(str(text)[-1500:])


def run_training_job(job: TrainJob) -> dict:
    """Run ONE training job in a sandbox, on the job's executor, and return its outcome:
    ``{"ok", "reason", "message", "record", "fingerprint_id", "seed", "hparams", "wall_s", "execution"}``;
    a pruned tuning run has reason "pruned" and its checked validation curve in ``pruned_curve``.

    This is the single place where ``harness validate`` trains anything. The value it compares is the final
    validation loss at the reference rung, recomputed here from the runs' plain numbers."""
    request = evaluate_mod.sandbox_request(
        job.framework, job.profile, source=Path(job.program_path).read_text(), seed=job.seed, hparams=job.hparams,
        rungs=job.rungs, fingerprint_id=job.fingerprint_id, threads=job.threads,
        prune_above=sorted((job.prune_above or {}).items()), mixing=job.mixing)
    started = time.time()
    run = executor_mod.run_sandbox("objective", request, job.limit_s, job.profile.memory_cap_mib,
                                   executor=job.executor, baseline_limit_s=evaluate_mod.baseline_limit_s(job.profile))
    result, log = run.result, run.log
    out = {"ok": False, "seed": job.seed, "hparams": dict(job.hparams), "wall_s": time.time() - started,
           "fingerprint_id": None, "record": None, "execution": run.execution}
    if result is None:
        reason = {"timeout": "timeout", "memory": "memory", "disk": "policy",
                  "infrastructure": "infrastructure"}.get(run.outcome, "crash")
        return {**out, "reason": reason, "message": run.error or f"the sandbox ended with {run.outcome} and no result",
                "log_tail": _tail(log), "no_result": True}
    out["fingerprint_id"] = (result.get("fingerprint") or {}).get("id")
    out["hparams"] = result.get("hparams", out["hparams"])
    if result.get("reason") == "pruned" and job.prune_above:
        runs = result.get("runs")
        try:
            if not isinstance(runs, list) or len(runs) != 1 or not isinstance(runs[0], dict):
                raise MalformedRecord("a pruned run must report its one run")
            curve = checked_curve(runs[0].get("val_curve"), "the pruned run's validation curve")
        except MalformedRecord as exc:
            return {**out, "reason": "tampering", "message": str(exc), "log_tail": _tail(log)}
        return {**out, "reason": "pruned", "message": printable(str(result.get("message", "")))[:2000],
                "pruned_curve": curve}
    if result.get("reason") != "ok":
        # What the sandbox said is printed and kept: a reason of its own words is tampering, its text printable.
        reason = result.get("reason", "crash")
        return {**out, "reason": reason if isinstance(reason, str) and reason in REASONS else "tampering",
                "message": printable(str(result.get("message", "")))[:2000],
                "log_tail": _tail(result.get("traceback") or log)}
    # The value is recomputed here from the runs' numbers; the sandbox's own fitness and values are not read.
    try:
        record = objective_from_untrusted(result.get("record"), _trained_profile(job), job_rungs(job))
    except MalformedRecord as exc:
        return {**out, "reason": "tampering", "message": f"the sandbox handed back a malformed training record: {exc}",
                "log_tail": _tail(log)}
    # Kept in validation.json and drawn in the report: typed and bounded, as the ledger keeps an evaluation's runs.
    record["runs"] = typed_runs(record["runs"])
    record.update(value=record["final_loss"], wall_s=(result.get("record") or {}).get("wall_s"))
    if job.mixing:
        record["mixing"] = checked_mixing((result.get("record") or {}).get("mixing"))
    return {**out, "ok": True, "reason": "ok", "message": "ok", "record": record}


def checked_mixing(mixing) -> dict | None:
    """The token-mixing matrices a sandbox reported, kept only as square layers of finite numbers (they are
    drawn, never scored); None otherwise."""
    try:
        layers = mixing["layers"]
        rung = [int(x) for x in mixing["rung"]]
        checked = []
        for layer in layers:
            rows = [[float(v) for v in row] for row in layer]
            if not rows or any(len(r) != len(rows) or not all(map(math.isfinite, r)) for r in rows):
                return None
            checked.append(rows)
        return {"rung": rung, "seed": int(mixing["seed"]), "layers": checked} if checked else None
    except (TypeError, KeyError, ValueError):
        return None


# Outcomes that say nothing about the program (the machine failed, or the limits it ran under, which are operational
# and not fingerprinted, stopped it): run again rather than remembered. The evaluator's result is kept the same way.
NOT_CACHED = ("infrastructure", "timeout", "memory")


def write_atomically(path: Path, text: str) -> None:
    """``text`` as the file ``path``, written beside it and renamed: a kill leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def remembered(job: TrainJob, outcome: dict) -> bool:
    """Whether an outcome may stand for its job on a resume: not one of ``NOT_CACHED``; not one from another
    environment than the job's (a worker of another kind: on a resume the job may land where it belongs); not a
    sandbox that ended with no result, which a program's crash and a kill from outside (the host's out-of-memory
    killer, say) both look like."""
    if outcome.get("reason") in NOT_CACHED or outcome.get("no_result"):
        return False
    return outcome.get("fingerprint_id") in (None, job.fingerprint_id)


class JobCache:
    """Finished training jobs, one JSON file each, named by the hash of everything that determines them (the
    program's text, the profile's digest, the seed, the hyperparameters, the rungs, the fingerprint, the pruning
    thresholds). A validation run again in the same folder takes them from here instead of training again."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def key(self, job: TrainJob) -> str:
        identity = {"framework": job.framework, "program": program_mod.sha256(Path(job.program_path).read_text()),
                    "profile": job.profile.digest(), "seed": job.seed, "hparams": job.hparams, "rungs": job.rungs,
                    "fingerprint": job.fingerprint_id, "prune_above": sorted((job.prune_above or {}).items()),
                    "mixing": job.mixing}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def wrap(self, runner):
        def cached(job: TrainJob) -> dict:
            path = self.folder / f"{self.key(job)}.json"
            if path.exists():
                return {**json.loads(path.read_text()), "cached": True}
            outcome = runner(job)
            if remembered(job, outcome):
                write_atomically(path, json.dumps(outcome, default=str))
            return outcome

        return cached


def run_batch(runner, batch: list[TrainJob], jobs: int, log) -> list[dict]:
    """Run independent training jobs, ``jobs`` at a time (1 = one after another), results in order."""
    def one(j: TrainJob) -> dict:
        r = runner(j)
        log(f"  {j.label} seed {j.seed}: {r['record']['value'] if r['ok'] else r['reason']} ({r['wall_s']:.0f} s"
            f"{', cached' if r.get('cached') else ''})")
        return r

    if jobs <= 1:
        return [one(j) for j in batch]
    from concurrent.futures import ThreadPoolExecutor  # each job is its own subprocess: threads suffice

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, batch))


RUN_FIELDS = ("rung", "final_val_loss", "non_embedding_params", "params", "val_curve", "train_curve", "ms_per_step",
              "wall_s", "status", "steps_done", "grad_norm_mean", "grad_norm_var", "loss_roughness", "peak_memory_mib",
              "compiled", "compile_mode", "compile_error")


def slim(run: dict) -> dict:
    """A job's outcome for the JSON, curves kept (they are small)."""
    out = {k: v for k, v in run.items() if k != "record"}
    if run.get("record"):
        rec = run["record"]
        out["record"] = {k: v for k, v in rec.items() if k not in ("runs", "mixing")}  # mixing: kept per comparison
        out["record"]["runs"] = [{k: r.get(k) for k in RUN_FIELDS} for r in rec["runs"]]
    return out


# ----------------------------------------------------------------------------------------------------------
# Candidates


@dataclass
class Candidate:
    framework: str
    source: Path  # the file as given (or written from a run's database)
    label: str
    origin: str  # "file" or "<run>:<program id>"
    # filled in by the evaluator step
    evaluation: dict = field(default_factory=dict)
    refused: str | None = None
    program_path: Path | None = None  # spliced copy under the output folder
    sha256: str = ""


SLUG_CHARS = 60


def slug(text: str) -> str:
    """A file-name part for ``text``; a long one is cut and ends with a hash of the whole, so that two texts that
    differ only past the cut (two programs of one run, by their ids) keep two names."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "candidate"
    if len(name) <= SLUG_CHARS:
        return name
    return name[:SLUG_CHARS - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def candidates_from_run(run_dir: Path, top_k: int, ledger_path: Path, work: Path, fingerprint: str | None = None) -> tuple[list[Candidate], list[str]]:
    """The top-k valid, verifiable programs of a run's latest checkpoint (ranked within one fingerprint
    group), excluding programs whose block equals the pristine seed's."""
    from harness.analysis.measures import fingerprint_groups, rank_group
    from harness.analysis.runs import load_run

    rows = ledger_mod.evaluations(ledger_path) if Path(ledger_path).exists() else []
    run = load_run(run_dir, rows)
    notes = []
    groups, unverifiable = fingerprint_groups(run.evolved())
    if unverifiable:
        notes.append(f"{run.name}: {len(unverifiable)} unverifiable program(s) (no ledger row) were not considered")
    if not groups:
        raise ConfigError(f"{run_dir}: no verifiable program (no ledger row matches): nothing to validate")
    if fingerprint:
        chosen = [g for g in groups if g.startswith(fingerprint)]
        if len(chosen) != 1:
            raise ConfigError(f"{run_dir}: fingerprint {fingerprint!r} matches {len(chosen)} of the groups {sorted(groups)}")
        fp = chosen[0]
    elif len(groups) > 1:
        raise ConfigError(f"{run_dir}: programs from {len(groups)} fingerprint groups ({sorted(groups)}) cannot be "
                          "ranked together; choose one with --fingerprint")
    else:
        fp = next(iter(groups))
    out, seen = [], set()
    for p in rank_group(groups[fp]):
        fw = p.framework or run.framework
        if fw is None:
            continue
        pristine = program_mod.split(FRAMEWORKS[fw].seed_source()).block
        block = p.block()
        if block.strip() == pristine.strip() or block in seen:
            continue
        seen.add(block)
        path = work / f"{slug(run.name)}_{p.id[:8]}.py"
        path.write_text(p.code)
        out.append(Candidate(fw, path, f"{fw}-{slug(run.name)}-{p.id[:8]}", f"{run_dir}:{p.id}"))
        if len(out) >= top_k:
            break
    if not out:
        notes.append(f"{run.name}: no valid program other than the seed")
    return out, notes

"""``harness campaign``: the users' whole experiment in one resumable command.

Phases, each checkpointed in ``campaign.json`` (written atomically) so that the same command run again after a
crash or a ``kill -9`` continues where it stopped and never repeats finished work:

1. pre-registration (``plan``), before anything runs;
2. evolution: stock ``openevolve-run`` per framework, as many at once as there are evaluation slots, each
   checkpointed every iteration and resumed from its latest checkpoint;
3. analysis (``harness analyze``) and selection: the best valid program of each framework within one
   fingerprint;
4. validation (``harness validate``) of those programs against their seeds, the frameworks compared; its
   training jobs and evaluations are cached in its folder, so a resumed validation trains only what is missing;
5. the final report.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from harness.analysis.runs import display_path, latest_checkpoint
from harness.campaign import plan as plan_mod
from harness.campaign.progress import Progress, evolution_status, validation_status
from harness.campaign.report import departures, render_report
from harness.trusted import ledger as ledger_mod
from harness.trusted import slots
from harness.trusted.fingerprint import harness_code_hash
from harness.trusted.frameworks import REPO_ROOT
from harness.trusted.profiles import ConfigError, Profile

STATE_FILE = "campaign.json"
PHASES = ("evolve", "select", "validate", "report")


@dataclass
class Campaign:
    settings: plan_mod.Settings
    profile: Profile
    out_dir: Path
    command: str = "harness campaign"
    jobs: int = 1
    threads: int | None = 1
    progress_interval_s: float = 30.0
    evolve_timeout_s: float = 7 * 24 * 3600.0
    log: Callable[[str], None] = print
    state: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir).resolve()  # OpenEvolve runs in the run folders: every path absolute

    # ------------------------------------------------------------------------------------------------
    # State

    @property
    def ledger_path(self) -> Path:
        return self.out_dir / "ledger.sqlite"

    def _load_state(self) -> None:
        path = self.out_dir / STATE_FILE
        self.state = json.loads(path.read_text()) if path.exists() else {"phases": {}, "starts": []}

    def _save_state(self) -> None:
        tmp = self.out_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.out_dir / STATE_FILE)

    def _done(self, phase: str, key: str | None = None) -> bool:
        entry = self.state["phases"].get(phase)
        return bool(entry and (entry.get("done") if key is None else entry.get(key, {}).get("done")))

    def _mark(self, phase: str, key: str | None = None, **info) -> None:
        entry = self.state["phases"].setdefault(phase, {})
        if key is None:
            entry.update(info, done=True)
        else:
            entry.setdefault(key, {}).update(info, done=True)
        self._save_state()

    # ------------------------------------------------------------------------------------------------
    # The command

    def run(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        os.environ["HARNESS_LEDGER"] = str(self.ledger_path)  # every evaluation of the campaign, one ledger
        self._load_state()
        prereg = self._preregister()
        self.state["starts"].append({"at": time.time(), "code_hash": harness_code_hash()})
        self._save_state()
        if len(self.state["starts"]) > 1:
            self.log(f"[campaign] resuming {display_path(self.out_dir)}: phases done: "
                     f"{', '.join(p for p in PHASES if self._done(p)) or 'none'}")
        for phase in PHASES:
            if self._done(phase) and phase != "report":  # the report is rendered again from the records each start,
                continue                                   # with what was added since (an interpretation, say)
            started = time.time()
            self.state["starts"][-1].setdefault("phases", []).append(phase)
            self.log(f"[campaign] phase {phase}")
            getattr(self, f"_{phase}")(prereg)
            self.state["phases"][phase]["wall_s"] = self.state["phases"][phase].get("wall_s", 0.0) + \
                time.time() - started
            self._save_state()
        report = self.out_dir / "report.md"
        self.log(f"[campaign] done: {display_path(report)}")
        return report

    def _preregister(self) -> dict:
        prereg = plan_mod.load(self.out_dir)
        if prereg is not None:
            plan_mod.check_same_plan(prereg, self.settings, self.out_dir)
            for fw, registered in prereg["configs"].items():
                path = self.out_dir / "configs" / f"{fw}.yaml"
                if not path.exists():  # the plan was written, and then this copy lost
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(registered["text"])
                if hashlib.sha256(path.read_bytes()).hexdigest() != registered["sha256"]:
                    raise ConfigError(f"{path} changed since the pre-registration: restore it (its registered text is "
                                      f"in {plan_mod.PREREGISTRATION_JSON}), or start another campaign with another "
                                      "--out")
            return prereg
        configs = {fw: self._config_text(fw) for fw in self.settings.frameworks}
        prereg = plan_mod.build(self.settings, self.profile, harness_code_hash(), configs)
        prereg["command"], prereg["created"] = self.command, time.strftime("%Y-%m-%d %H:%M:%S")
        for fw, text in configs.items():  # before the plan, whose presence says that everything it names is there
            path = self.out_dir / "configs" / f"{fw}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        plan_mod.write(self.out_dir, prereg)
        self.log(f"[campaign] pre-registered: {display_path(self.out_dir / plan_mod.PREREGISTRATION_MD)}")
        return prereg

    def _config_text(self, fw: str) -> str:
        """The stock config of the framework, run for the planned iterations and checkpointed every iteration, so
        that a resume loses at most the iterations in flight."""
        config = yaml.safe_load((REPO_ROOT / "openevolve_configs" / f"{fw}.yaml").read_text())
        config.update(max_iterations=self.settings.iterations, checkpoint_interval=1)
        return ("# The campaign's copy of openevolve_configs/" + fw + ".yaml: max_iterations and checkpoint_interval"
                " set by harness campaign.\n" + yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------------------------------------
    # Phase: evolution

    def run_dir(self, fw: str) -> Path:
        return self.out_dir / "runs" / fw

    def _last_iteration(self, fw: str) -> int:
        """The iteration of the run's latest complete checkpoint: one cut short by a kill is no place to resume."""
        checkpoint = latest_checkpoint(self.run_dir(fw))
        return int(checkpoint.name.rsplit("_", 1)[-1]) if checkpoint else 0

    def _evolve(self, prereg: dict) -> None:
        from harness.proposer.demo import run_openevolve, run_with_builtin_proposer

        todo = [fw for fw in self.settings.frameworks if not self._done("evolve", fw)]
        concurrency = max(1, min(len(todo), len(slots.slot_devices())))
        done_before = {fw: self._last_iteration(fw) for fw in self.settings.frameworks}
        finished: set[str] = set()
        since, running, lock = time.time(), set(), threading.Lock()
        errors: dict[str, str] = {}
        proposer = self.settings.proposer
        env = {"HARNESS_PROFILE": self.profile.name, "HARNESS_LEDGER": str(self.ledger_path)}

        def one(fw: str) -> None:
            last = self._last_iteration(fw)
            if 0 < last < self.settings.iterations:
                seen, stopped_at, rule_a = self._evolution_so_far(fw)
                if stopped_at is not None or rule_a is not None:
                    # OpenEvolve counts iterations without improvement afresh on every start: resumed, it would run
                    # on past the point where the design's rule (a) stops evolution.
                    at = stopped_at if stopped_at is not None else rule_a
                    with lock:
                        self._mark("evolve", fw, iterations=seen, stopped_at=at)
                        finished.add(fw)
                    self.log(f"[evolve] {fw}: stopped by the design's rule (a) at iteration {at}; not resumed")
                    return
                with lock:
                    entry = self.state["phases"].setdefault("evolve", {}).setdefault(fw, {})
                    entry["resumed_after"] = entry.get("resumed_after", []) + [last]
                    self._save_state()
            remaining = self.settings.iterations - last
            checkpoint = self.run_dir(fw) / "checkpoints" / f"checkpoint_{last}" if last else None
            with lock:
                running.add(fw)
            self.log(f"[evolve] {fw}: " + (f"resuming after iteration {last}, {remaining} to go" if last else
                                            f"{remaining} iterations"))
            try:
                kwargs = dict(output_dir=self.run_dir(fw), config_path=self.out_dir / "configs" / f"{fw}.yaml",
                              checkpoint=checkpoint, extra_env=env, timeout_s=self.evolve_timeout_s)
                if remaining <= 0:
                    result = None
                elif proposer["kind"] == "builtin":
                    result = run_with_builtin_proposer(fw, remaining, seed=proposer["seed"] + self._offset(fw),
                                                       **kwargs)
                else:
                    result = run_openevolve(fw, remaining, api_base=proposer["api_base"], model=proposer["model"],
                                            **kwargs)
                if result is not None and (result.returncode != 0 or result.timed_out):
                    errors[fw] = (f"openevolve-run exited with {result.returncode}"
                                  f"{' (timed out)' if result.timed_out else ''}; see {display_path(result.log_path)}")
                    return
                seen, stopped_at, _ = self._evolution_so_far(fw)
                with lock:
                    self._mark("evolve", fw, iterations=seen, stopped_at=stopped_at)
                    finished.add(fw)
                self.log(f"[evolve] {fw}: done at iteration {seen}"
                         + (" (stopped early by OpenEvolve, the design's rule (a))" if stopped_at is not None else ""))
            finally:
                with lock:
                    running.discard(fw)

        progress = Progress(self.log, self.progress_interval_s).watch(
            lambda: evolution_status(list(self.settings.frameworks), self.settings.iterations, done_before,
                                     self.ledger_path, since, set(running), concurrency, set(finished)))
        try:
            threads = []
            pending = list(todo)
            while pending or threads:
                threads = [t for t in threads if t.is_alive()]
                while pending and len(threads) < concurrency:
                    t = threading.Thread(target=one, args=(pending.pop(0),), daemon=True)
                    t.start()
                    threads.append(t)
                time.sleep(0.5)
        finally:
            progress.stop()
        for fw in todo:  # a run that raised instead of returning leaves no mark: it is unfinished too
            if not self._done("evolve", fw) and fw not in errors:
                errors[fw] = "its run stopped with an error; see the log above"
        if errors:
            raise ConfigError("evolution did not finish: " + "; ".join(f"{fw}: {e}" for fw, e in errors.items())
                              + f". Run the same command with --out {display_path(self.out_dir)} again to resume.")
        self._mark("evolve", ended_at=time.time())  # the ledger's later rows are the validation's

    def _evolution_so_far(self, fw: str) -> tuple[int, int | None, int | None]:
        """(the last iteration that ran, the iteration at which OpenEvolve's early stopping ended the run, the
        iteration at which the design's rule (a), replayed over the run in iteration order, fires)."""
        from harness.analysis.measures import stopping_rules
        from harness.analysis.runs import load_run

        rows = ledger_mod.evaluations(self.ledger_path) if self.ledger_path.exists() else []
        run = load_run(self.run_dir(fw), rows)
        rule_a = next(r["fired_at"] for r in stopping_rules(run) if r["rule"] == "no_improvement")
        return run.last_iteration, run.stopped_at, rule_a

    def _offset(self, fw: str) -> int:
        """Each framework's proposer gets its own seed (the campaign's seed plus its position)."""
        return list(self.settings.frameworks).index(fw)

    # ------------------------------------------------------------------------------------------------
    # Phase: analysis and selection

    def _select(self, prereg: dict) -> None:
        from harness.analysis.report import analyze
        from harness.validation.jobs import candidates_from_run

        runs = [self.run_dir(fw) for fw in self.settings.frameworks]
        analysis = analyze(runs, ledger_path=self.ledger_path, out_dir=self.out_dir / "analysis", name="analysis")
        inputs = self.out_dir / "validation" / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        chosen, notes, unranked = {}, [], {}
        flagged = {f["id"]: f["flags"] for r in analysis["runs"] for f in r.get("flagged", [])}
        for fw, run in zip(self.settings.frameworks, runs):
            try:
                found, run_notes = candidates_from_run(run, 1, self.ledger_path, inputs)
            except ConfigError as exc:
                found, run_notes = [], [f"{fw}: {exc}"]
                unranked[fw] = str(exc).replace(str(run) + ": ", "")
            notes += run_notes
            if found:  # paths relative to the campaign folder: the folder can move, and its files name no machine
                c = found[0]
                chosen[fw] = {"path": str(c.source.relative_to(self.out_dir)), "label": c.label,
                              "origin": c.origin.replace(str(self.out_dir) + "/", ""),
                              "flags": flagged.get(c.origin.rsplit(":", 1)[-1])}
        summaries = {r["framework"]: {"last_iteration": r["last_iteration"], "evaluated": r["validity"]["evaluated"],
                                      "valid": r["validity"]["valid"],
                                      "best": {fp: g["best"]["combined_score"] for fp, g in r["groups"].items()
                                               if g["best"]},
                                      "stopping_rules": [x for x in r.get("stopping_rules", []) if x["fired_at"]]}
                     for r in analysis["runs"] if r.get("framework")}
        self._mark("select", candidates=chosen, notes=notes, runs=summaries, unranked=unranked)
        picked = ", ".join(f"{fw}: {c['label']}" for fw, c in chosen.items())
        self.log(f"[select] {picked or 'no candidate'}")

    # ------------------------------------------------------------------------------------------------
    # Phase: validation

    def _validate(self, prereg: dict) -> None:
        from harness.validation.jobs import Candidate
        from harness.validation.pipeline import validate

        chosen = self.state["phases"]["select"]["candidates"]
        out = self.out_dir / "validation"
        if not chosen:
            self._mark("validate", skipped="no framework produced a valid program other than its seed")
            return
        candidates = [Candidate(fw, self.out_dir / c["path"], c["label"], c["origin"]) for fw, c in chosen.items()]
        total = len(candidates) * (2 * len(self.settings.seeds) + 2 * self.settings.trials)
        started, cached = time.time(), len(list((out / "jobs").glob("*.json")))
        progress = Progress(self.log, self.progress_interval_s).watch(
            lambda: validation_status(len(list((out / "jobs").glob("*.json"))), total, started, cached))
        try:
            validate(candidates, self.profile, out, tuning=self.settings.tuning, trials=self.settings.trials,
                     seeds=list(self.settings.seeds), threads=self.threads, jobs=self.jobs,
                     ledger_path=self.ledger_path, log=self.log, name="validation", command=self.command,
                     notes=self.state["phases"]["select"].get("notes", []),
                     departures=departures(prereg, self.state))
        finally:
            progress.stop()
        self._mark("validate")

    # ------------------------------------------------------------------------------------------------
    # Phase: the final report

    def _report(self, prereg: dict) -> None:
        validation_path = self.out_dir / "validation" / "validation.json"
        validation = json.loads(validation_path.read_text()) if validation_path.exists() else None
        rows = ledger_mod.evaluations(self.ledger_path) if self.ledger_path.exists() else []
        text = render_report(prereg, self.state, validation, rows, self.out_dir)
        (self.out_dir / "report.md").write_text(text)
        self._mark("report")

"""Run the idiom sweep (``candidates.py``, built from this checkout's seeds) through the static policy, the loader and
the dynamic gate (smoke profile, CPU) of the harness in another checkout, to compare versions on the same candidates:

    git worktree add /tmp/before <commit>
    python results/false_rejections/idioms/run.py /tmp/before > before.json
    python results/false_rejections/idioms/run.py . > after.json

Prints one JSON record per candidate: its verdict (accepted, static refusal, load-time refusal, gate refusal, crash),
the reason and the message, and for an accepted one its FLOP and step-time ratios. All candidates run in this one
process; uses only what older versions also have (``static_gate``, ``load_attention``, ``run_gate``, ``snapshot``).
"""

import json
import sys
import time
from pathlib import Path

checkout = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(checkout))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # the candidates of this checkout

import harness  # noqa: E402
from harness.sandbox import snapshot  # noqa: E402
from harness.sandbox.checks import GateFailure, run_gate  # noqa: E402
from harness.sandbox.loader import load_attention  # noqa: E402
from harness.trusted import program  # noqa: E402
from harness.trusted.evaluate import static_gate  # noqa: E402
from harness.trusted.frameworks import get_framework  # noqa: E402
from harness.trusted.profiles import get_profile  # noqa: E402
from candidates import CANDIDATES  # noqa: E402

assert Path(harness.__file__).resolve().is_relative_to(checkout), harness.__file__
profile = get_profile("smoke")
started = time.time()
records = []


def verdict_of(c) -> dict:
    seed = get_framework(c.framework).seed_source()
    parts = program.split(seed)
    spliced = program.splice(seed, parts.head + c.block + parts.tail)
    refused = static_gate(c.framework, spliced)
    if refused is not None:
        return {"verdict": "static refusal", "reason": refused[0].value, "message": refused[1]}
    before = snapshot.take()
    stage = "load-time refusal"
    try:
        seed_cls, cand_cls = load_attention(seed, "seed.py"), load_attention(spliced, "evolved_program.py")
        snapshot.check(before, "loading the program")
        stage = "gate refusal"
        metrics, _ = run_gate(cand_cls, seed_cls, profile, "cpu")
        snapshot.check(before, "during the gate")
    except GateFailure as failure:
        return {"verdict": "gate refusal", "reason": failure.reason.value, "message": failure.message}
    except snapshot.RuntimeTampering as exc:
        return {"verdict": stage, "reason": "runtime tampering", "message": str(exc)}
    except Exception as exc:  # the loader's PolicyViolation, or a crash
        if type(exc).__name__ == "PolicyViolation":
            return {"verdict": "load-time refusal", "reason": "policy", "message": str(exc)}
        return {"verdict": "crash", "reason": type(exc).__name__, "message": str(exc)}
    return {"verdict": "accepted", "reason": "ok", "message": "",
            "flop_ratio": round(metrics["flop_ratio"], 3), "step_time_ratio": round(metrics["step_time_ratio"], 3)}


for c in CANDIDATES:
    t0 = time.time()
    record = {"name": c.name, "framework": c.framework, "idiom": c.idiom, "deliberate": c.deliberate}
    record.update(verdict_of(c))
    record["message"] = record["message"][:300]
    record["seconds"] = round(time.time() - t0, 1)
    records.append(record)
    print(f"{c.name}: {record['verdict']} ({record['seconds']} s)", file=sys.stderr, flush=True)
print(f"{len(records)} candidates in {time.time() - started:.0f} s", file=sys.stderr)
print(json.dumps(records, indent=1))

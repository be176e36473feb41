"""``harness campaign``: the users' whole experiment in one resumable command (a tool around the loop: candidate
code runs only in the evaluator's sandboxes)."""

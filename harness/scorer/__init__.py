"""The trusted scorer: the final loss of each trained rung, measured in a process into which no candidate code is
ever loaded (see ``harness.scorer.score``). It uses torch, so it lives apart from ``harness.trusted``, whose modules
run in OpenEvolve's processes; like them, it never imports the sandbox side, the frozen model or a program."""

"""The untrusted side: everything that runs in the sandbox process, next to the candidate's code.

``python -m harness.sandbox`` (``entry``) loads the program (``loader``), runs the dynamic gate (``checks``,
``flops``) and the training (``objective``, ``train``, ``data``), and reports plain numbers. Nothing computed
here is believed by the trusted side without being checked and recomputed there.
"""

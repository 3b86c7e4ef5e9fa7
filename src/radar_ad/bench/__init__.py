"""``radar benchmark``: RADAR against the paper's baselines on the same
network, as a client of the public API (:mod:`.harness`), the baselines
themselves (:mod:`.baselines`), the result types (:mod:`.results`) and the
report (:mod:`.report`)."""

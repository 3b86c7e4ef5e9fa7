"""``radar benchmark``: RADAR against the paper's baselines on the same
network, as a client of the public API. The runner (:mod:`.runner`) runs the
methods (:mod:`.methods`) with a run's options (:mod:`.options`) on the
datasets (:mod:`.datasets`, split by :mod:`.splits`) and their cached models
(:mod:`.model_cache`), noting the machine (:mod:`.environment`); the
baselines themselves (:mod:`.baselines`), the result types (:mod:`.results`)
and the report (:mod:`.report`) sit beside them."""

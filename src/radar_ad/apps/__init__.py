"""What people run: the ``radar`` command line (:mod:`.cli`), the HTTP
inspection service (:mod:`.serve`), the watched folder (:mod:`.watch`) and the
demo (:mod:`.demo`). Built on the core and the benchmark; nothing below
imports them."""

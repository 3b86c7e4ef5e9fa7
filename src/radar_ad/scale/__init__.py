"""Scale-out paths built on the core: the same model and the same results,
run over many processes or machines (e.g. ``ray_detect``: ``radar detect
--engine ray``). The core never imports this package; the engines these
modules drive (Ray ...) are optional extras, imported where they are used."""

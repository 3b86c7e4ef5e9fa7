"""Registered inference backends beyond PyTorch, one module each (see
:class:`radar_ad.backend.NoiseBackend`). Every module in this package is
imported by the registry the first time a backend name is looked up, so a
module must not import its engine at the top (do it where it is used, with
:func:`radar_ad.errors.require`)."""

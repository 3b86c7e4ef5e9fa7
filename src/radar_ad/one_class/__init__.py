"""Registered one-class models, one module each (see
:class:`radar_ad.decision.OneClassModel`). Every module in this package is
imported by the registry the first time a model name is looked up."""

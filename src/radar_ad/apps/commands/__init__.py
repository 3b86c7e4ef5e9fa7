"""The ``radar`` verbs, one module per kind of job (:mod:`.model`,
:mod:`.detect`, :mod:`.service`, :mod:`.measure`) and the options they
share (:mod:`.common`); :mod:`radar_ad.apps.cli` puts them on the app.

Each verb imports what it runs inside its function, so that ``radar
--help`` answers without importing PyTorch."""

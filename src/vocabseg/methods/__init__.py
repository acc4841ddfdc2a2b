"""One package per method: model, its own components, converter, losses, presets
(``presets.PRESETS``, collected by ``vocabseg.registry``)."""

"""The features layer: the backbone registry (``backbones``), each backbone exported once
(``export``, ``int8``) and run by an engine (``engines``), the on-disk feature store (``store``),
embedding posters and catalogues (``embed``) and poster text (``ocr``). It imports the data
layer only."""

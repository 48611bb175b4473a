"""The data layer: catalogues -> one table (``catalog``), posters downloaded (``fetch``, ``http``),
read and decoded safely (``images``), a catalogue's embedded posters (``dataset``) and every
split recipe (``splits``). It imports nothing above it."""

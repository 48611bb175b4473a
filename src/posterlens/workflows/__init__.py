"""The workflows layer: whole jobs built from the layers below: ``train`` (with ``config``),
``evaluate`` (with ``metrics`` and ``report``), ``predict``, ``tune`` (with ``tune_report``),
``compare`` and ``explain``. The CLI, the DAG and the web app call these."""

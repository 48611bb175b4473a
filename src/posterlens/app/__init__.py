"""The app layer: thin shells over the workflows: the command line (``cli``), the web page and
JSON API (``serve``), the pipeline stages the Airflow DAG wires together (``pipeline``), the
demo (``demo``) and the prediction CSV files (``outputs``)."""

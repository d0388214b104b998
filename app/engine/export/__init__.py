"""Exporters: techniques that send a model a job produced, with that job's params and report,
to an external service (``export.mlflow``). They never run the model."""

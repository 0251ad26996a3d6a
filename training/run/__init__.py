"""The run folder: its file names and tables (artifacts), identity and resume (lifecycle), the lock,
the experiment tracker, MLflow logging and the model registry."""

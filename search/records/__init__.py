"""The MLflow records: one parent run per search and one child per candidate, the queries over them, the report and its figures."""

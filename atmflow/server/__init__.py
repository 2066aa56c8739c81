"""The server side: finds the task nodes, runs a strategy, evaluates per task, writes the report."""

"""What a round is made of, below both the strategies and the server: one exchange with the task nodes
(messages out, replies by task, the ``on-missing-task`` policy, the evaluator), its records and the
task-vector geometry."""

"""The task client: owns one task's data and frozen head, fine-tunes what it is sent, returns a task vector.

It knows nothing about how its task vector will be merged.
"""

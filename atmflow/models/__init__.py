"""Models: the shared pretrained encoder (fine-tuned and merged) and the frozen per-task heads."""

"""Task-arithmetic analyses of fine-tuned task vectors: negation and weight disentanglement (paper 004) and
the knowledge conflict (paper 003), computed in this process through the real ClientApp."""

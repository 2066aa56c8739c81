"""ATM, Alternating Tuning and Merging (papers 000 and 001).

Each round every task fine-tunes the current base for ``epochs-per-round`` epochs; the server
merges the task vectors into the next base. With the default merge step (mean, alpha = 1):
``theta^(k+1) = theta^(k) + alpha / |T| * sum_t tau_t^(k)`` (paper 000, Eq. 5). ATM is agnostic
to the merge step: any operator of :mod:`atmflow.merging` can take its place, applied as a mean over
the tasks with scaling 1 as in paper 000, Sec. 6.1 (:class:`~atmflow.strategies.merge_step.MergeStep`).

PA-ATM starts from the pretrained model and fine-tunes on the training splits; PH-ATM starts from
a merged model (Task Arithmetic) and fine-tunes on the validation splits (paper 001, Section 3);
valFT ATM starts from the pretrained model and fine-tunes on the validation splits (paper 000, Sec.
6.5). All are this strategy with a different start and ``split`` (chosen by the run plan).
"""

from __future__ import annotations

from atmflow.strategies.base import RoundInputs, StateDict, TaskVectorStrategy


class ATM(TaskVectorStrategy):
    def merge(self, base: StateDict, inputs: RoundInputs) -> StateDict:
        return self.merge_step.apply(base, inputs.vectors, inputs.num_examples, inputs.grads or None,
                                     round_=inputs.round)

"""Prompt templates of the zero-shot classification heads, per task (``{}`` = the class name).

The paper tasks' templates are those of the task-vector literature (Ilharco et al., "Editing models
with task arithmetic", code ``mlfoundations/task_vectors``, ``src/datasets/templates.py``), which
took them from CLIP (Radford et al. 2021, ``openai/CLIP`` ``data/prompts.md``). The embedded tasks'
templates (fashion-mnist, animal-mnist, digits) are this project's, in the same style; mnist
uses the literature's MNIST template.
"""

from __future__ import annotations

_CIFAR = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
]
_NUMBER = ['a photo of the number: "{}".']

TEMPLATES: dict[str, list[str]] = {
    # the task-vector literature's (see module docstring)
    "cars": [
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
        "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}.",
    ],
    "cifar100": _CIFAR,
    "dtd": [
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.", "a photo of a {} object.",
        "a photo of the {} texture.", "a photo of the {} pattern.", "a photo of the {} thing.",
        "a photo of the {} object.",
    ],
    "eurosat": [
        "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ],
    "gtsrb": [
        'a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
    ],
    "mnist": _NUMBER,
    "resisc45": [f"{kind} {view} of {art}{{}}." for art in ("", "a ", "the ")
                 for kind, view in (("satellite", "imagery"), ("aerial", "imagery"), ("satellite", "photo"),
                                    ("aerial", "photo"), ("satellite", "view"), ("aerial", "view"))],
    "sun397": ["a photo of a {}.", "a photo of the {}."],
    "svhn": _NUMBER,
    # the embedded benchmark's (this project's)
    "fashion-mnist": ["a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}."],
    "animal-mnist": ["a silhouette of a {}.", "a black and white drawing of a {}.", "a shape of a {}."],
    "digits": _NUMBER,
}


def prompts(key: str, class_name: str) -> list[str]:
    """Every template of ``key`` filled with ``class_name``."""
    if key not in TEMPLATES:
        raise ValueError(f"no zero-shot templates for {key!r}; available: {', '.join(sorted(TEMPLATES))}")
    return [t.format(class_name) for t in TEMPLATES[key]]

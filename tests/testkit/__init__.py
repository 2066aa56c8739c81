"""Helpers shared by the tests (``tests/`` is on ``sys.path``: pyproject's ``[tool.pytest.ini_options] pythonpath``).

``hf_data``: small image data sets in the Hugging Face hub format. ``references``: independent
computations of every merge rule's formula, on flattened task vectors.
"""

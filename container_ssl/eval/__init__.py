"""Evaluation of frozen and finetuned backbones, and the comparison report.

Modules: :mod:`.backbone` (rebuild a backbone from any accepted checkpoint), :mod:`.features` (features and
their disk cache), :mod:`.knn` (DINO's weighted k-NN, torch and faiss), :mod:`.probe` (linear heads),
:mod:`.transforms`, :mod:`.metrics`, :mod:`.options` (shared flags and the evaluator context); the commands
``knn`` (:mod:`.knn_cli`), ``linear``, ``finetune`` and ``report``. Nothing is imported here: each command
loads only its own module and what that needs.
"""

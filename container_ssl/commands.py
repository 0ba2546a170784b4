"""The ``container-ssl`` sub-commands: name -> (module that implements it, one-line help).

Why a leaf module: both the console script (:mod:`container_ssl.cli`) and the job that runs a command on a
cluster node (:mod:`container_ssl.launch.jobs`) look commands up here. It imports nothing, so neither has
to import the other (the CLI sits above ``launch``) and listing the commands costs nothing. Each module
named here exposes ``configure_parser(parser)`` and ``run(args) -> int`` and is imported only when its
command is used; ``tests/test_layers.py`` reads these paths as imports of this table's users.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("container_ssl.models.summary", "list the registered backbones with params and GMACs"),
    "pretrain": ("container_ssl.ssl.pretrain_cli", "DINO self-supervised pretraining (student + EMA teacher)"),
    "knn": ("container_ssl.eval.knn_cli", "weighted k-NN evaluation of frozen features (torch or faiss)"),
    "linear": ("container_ssl.eval.linear", "linear probe on frozen features"),
    "finetune": ("container_ssl.eval.finetune", "low-data finetune (e.g. 10%% of the labels)"),
    "report": ("container_ssl.eval.report", "markdown + PNG report comparing runs"),
    "visualize": ("container_ssl.eval.visualize", "attention maps, affinity mix and static kernels as PNG + JSON"),
    "export": ("container_ssl.export", "backbone as timm safetensors + config.json, optionally ONNX"),
    "submit": ("container_ssl.launch.submit", "run any command on SLURM (or locally) through submitit"),
}

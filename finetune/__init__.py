"""The organism factory: finetune a base model on a narrow dataset (LoRA or full) to audit it with ADL.

`finetune.data` builds training rows, `finetune.lora` holds the adapters, `finetune.train` trains,
checkpoints and exports, `finetune.organisms` generates datasets with known ground truth.
"""

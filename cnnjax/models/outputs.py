"""What every model returns beside its logits: `intermediates`, named activations in forward order. Entries named
`aux_*` are auxiliary classifiers' logits (GoogLeNet's in training): training adds their loss, weighted by
`config.aux_loss_weight`, whatever the model."""

AUXILIARY = "aux_"


def auxiliary_name(position: str) -> str:
  """The name of the auxiliary classifier at `position` (a stage: '4a'), as module and intermediate."""
  return AUXILIARY + position


def auxiliary_logits(intermediates: dict) -> dict:
  """{name: logits} of the auxiliary classifiers among a model's intermediates."""
  return {k: v for k, v in intermediates.items() if k.startswith(AUXILIARY)}

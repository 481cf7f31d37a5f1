"""MODEL= name → family module. ``all`` is handled by the search space, not here."""
from __future__ import annotations

from models import cnn, efficientnet, mobilenet, resnet, vgg
from models.common import BuiltModel, ModelConfigError

FAMILIES = {
    "cnn": cnn,
    "efficientnet": efficientnet,
    "mobilenet": mobilenet,
    "resnet": resnet,
    "vgg": vgg,
}
PRETRAINED = frozenset({"efficientnet", "mobilenet", "resnet", "vgg"})


def build_model(family: str, params: dict, *, num_classes: int, image_size: int, weights: str | None = None,
                seed: int = 0) -> BuiltModel:
    """Build ``family`` from trial parameters. ``weights=None`` picks the family default."""
    if family not in FAMILIES:
        raise ModelConfigError(f"MODEL={family}: unknown family; choose one of {', '.join(FAMILIES)} or all")
    if weights is None:
        weights = "imagenet" if family in PRETRAINED else "none"
    return FAMILIES[family].build(params, num_classes=num_classes, image_size=image_size, weights=weights, seed=seed)

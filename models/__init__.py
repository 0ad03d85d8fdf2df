"""Video recognition models behind one registry.

    import models
    models.available()                                   # ["x3d_l", "x3d_m", "x3d_s", "x3d_xs"]
    model = models.create("x3d_xs", weights="kinetics400")  # eval mode
    logits = model(*model.example_inputs())              # (1, 400), no softmax
    model.meta.labels[int(logits.argmax())]

`model.meta` (ModelMeta) is the one place that says what a model expects (frames,
sampling interval, crop, resize, mean/std) and what its outputs mean (labels).
"""

from models import motionformer as _motionformer  # noqa: F401
from models import mvit as _mvit  # noqa: F401
from models import slowfast as _slowfast  # noqa: F401
from models import x3d as _x3d  # noqa: F401  (registers the X3D variants)
from models._registry import (
    AudioInput,
    ModelError,
    ModelMeta,
    UnknownModelError,
    VideoInput,
    WeightsError,
    available,
    create,
)

__all__ = [
    "AudioInput",
    "ModelError",
    "ModelMeta",
    "UnknownModelError",
    "VideoInput",
    "WeightsError",
    "available",
    "create",
]

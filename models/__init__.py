"""Video recognition models behind one registry.

    import models
    models.available()       # every registered name: X3D, SlowFast, AVSlowFast, MViT, Motionformer
    model = models.create("x3d_xs", weights="kinetics400")  # eval mode
    logits = model(*model.example_inputs())              # (1, 400), no softmax
    model.meta.labels[int(logits.argmax())]

    # a family's build options, by keyword (models.build_options(name) lists them):
    model = models.create("motionformer_b", weights="kinetics400", attention="orthoformer")

    # fine-tuning for your own labels, on a reduced network:
    model = models.create("avslowfast_r50", labels=["kettle", "nothing"],
                          width=16, depths=(1, 1, 1, 1))
    models.save_checkpoint(model, "model.pt")     # models.create(name, weights="model.pt")

`model.meta` (ModelMeta) is the one place that says what a model expects (frames,
sampling interval, crop, resize, mean/std) and what its outputs mean (labels);
`model.options` holds the build options it was made with.
"""

from models import motionformer as _motionformer  # noqa: F401
from models import mvit as _mvit  # noqa: F401
from models import slowfast as _slowfast  # noqa: F401
from models import x3d as _x3d  # noqa: F401  (registers the X3D variants)
from models._registry import (
    AudioInput,
    ModelError,
    ModelMeta,
    Option,
    UnknownModelError,
    VideoInput,
    WeightsError,
    available,
    build_options,
    create,
    has_zoo_weights,
)
from models._weights import save_checkpoint

__all__ = [
    "AudioInput",
    "ModelError",
    "ModelMeta",
    "Option",
    "UnknownModelError",
    "VideoInput",
    "WeightsError",
    "available",
    "build_options",
    "create",
    "has_zoo_weights",
    "save_checkpoint",
]

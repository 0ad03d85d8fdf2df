"""Video recognition models behind one registry.

    import models
    models.available()       # every variant, sorted: X3D, SlowFast, AVSlowFast, MViT, Motionformer
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

import importlib

from models._registry import (
    AudioInput,
    ModelError,
    ModelMeta,
    Option,
    UnknownModelError,
    VideoInput,
    WeightsError,
)

#: The family modules: each registers its variants when it is imported.
_FAMILIES = ("motionformer", "mvit", "slowfast", "x3d")
#: What needs the registry complete (every family imported), and where it lives.
_LOADED_ON_USE = {
    "available": "models._registry",
    "build_options": "models._registry",
    "create": "models._registry",
    "has_zoo_weights": "models._registry",
    "save_checkpoint": "models._weights",
}


def __getattr__(name: str):
    """The registry's entry points import every family on first use (and the families,
    torch): `import models` alone, or a small module of it (`models._files`, which the
    torch-free parent processes of stream use), does not import torch."""
    if name in _FAMILIES:
        return importlib.import_module(f"models.{name}")
    if name not in _LOADED_ON_USE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    for family in _FAMILIES:
        importlib.import_module(f"models.{family}")
    value = getattr(importlib.import_module(_LOADED_ON_USE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_FAMILIES})


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

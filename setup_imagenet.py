"""The original's module name for ImageNet: the model registry and the test-image loader.

The implementation lives in `cleverscore.models.imagenet` and `cleverscore.data.imagenet`.
"""

from cleverscore.data.imagenet import class_names, list_labelled_images, load_imagenet
from cleverscore.models.imagenet import NO_KERAS_EQUIVALENT, REGISTRY, build_imagenet_model, registry_entry

__all__ = ["NO_KERAS_EQUIVALENT", "REGISTRY", "build_imagenet_model", "class_names", "list_labelled_images",
           "load_imagenet", "registry_entry"]

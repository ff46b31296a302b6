"""Loading a run's inputs and its classifier, from the settings: in the driver and in every Ray worker."""

from __future__ import annotations

import numpy as np

from cleverscore.settings import CollectSettings


def load_inputs(settings: CollectSettings) -> tuple[np.ndarray, np.ndarray]:
    """(images, integer labels) of the run: a user's data, ImageNet images or a built-in test set."""
    data, model = settings.data, settings.model
    if data.data_path:
        from cleverscore.data.user import load_user_data

        return load_user_data(str(data.data_path), model.input_range)
    if model.dataset == "imagenet":
        from cleverscore.data.imagenet import find_image_folder, load_imagenet
        from cleverscore.models.imagenet import registry_entry

        folder, found_labels = find_image_folder(None if data.data_dir is None else str(data.data_dir))
        labels = data.labels or found_labels
        size = registry_entry(model.model_name).size
        x, y, _ = load_imagenet(folder, size, data.firstimg + data.numimg, 0, settings.sampling.seed,
                                None if labels is None else str(labels))
        return x, y
    from cleverscore.data import load_dataset

    dataset = load_dataset(model.dataset, data.data_dir)
    return dataset.test_data, np.argmax(dataset.test_labels, axis=1)


def load_classifier(settings: CollectSettings, estimator, image_shape: tuple[int, ...] | None = None) -> None:
    """Load the model into the estimator.

    `image_shape` (H, W, C) of the inputs lets an ONNX model's layout and dynamic sizes be resolved.
    """
    model_settings, sampling = settings.model, settings.sampling
    model = None
    if model_settings.model_path:
        from cleverscore.models.user import prepared_user_model

        model = prepared_user_model(model_settings, image_shape)
    elif model_settings.dataset == "imagenet":
        from cleverscore.models.imagenet import build_imagenet_model

        model = build_imagenet_model(model_settings.model_name, model_settings.weights, sampling.seed)
    estimator.load_model(model_settings.dataset, model_settings.model_name, model_settings.activation, model=model,
                         batch_size=sampling.batch_size or 0, compute_slope=sampling.compute_slope,
                         order=sampling.order, input_range=model_settings.input_range, devices=sampling.devices)

"""Files that travel inside the package: the default model's weights, the MNIST test files, the ImageNet class names."""

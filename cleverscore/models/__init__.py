"""Models: the MNIST/CIFAR zoo, ImageNet applications, a user's Keras, SavedModel or ONNX model, training."""

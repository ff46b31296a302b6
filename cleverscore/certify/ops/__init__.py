"""One module per operator family; each operator is a class with the interface of `base.Operator`."""

from .activation import ELU, Activation, BoundedReLU, ReLU, Sigmoid, Softplus, Tanh
from .base import Interval, Operator
from .linear import Add, ChannelAffine, Conv2D, Dense, LinearOperator, Reshape
from .pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D

__all__ = [
    "ELU", "Activation", "Add", "AveragePooling2D", "BoundedReLU", "ChannelAffine", "Conv2D", "Dense",
    "GlobalAveragePooling2D", "Interval", "LinearOperator", "MaxPooling2D", "Operator", "ReLU", "Reshape",
    "Sigmoid", "Softplus", "Tanh",
]

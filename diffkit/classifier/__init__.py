"""Small CNN digit classifiers shipped with diffkit as the feature extractors of the image metrics."""

from diffkit.classifier.net import ClassifierConfig, DigitClassifier
from diffkit.classifier.shipped import load_classifier, shipped_classifiers

__all__ = ["ClassifierConfig", "DigitClassifier", "load_classifier", "shipped_classifiers"]

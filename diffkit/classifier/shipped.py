"""Loading the shipped classifiers from the package data (`weights/<name>.safetensors` + `<name>.json`)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from diffkit.classifier.net import ClassifierConfig, DigitClassifier
from diffkit.core.errors import UsageError

FORMAT = "diffkit-classifier"


def _weights() -> Any:
    return resources.files("diffkit.classifier").joinpath("weights")


def shipped_classifiers() -> list[str]:
    """Names of the datasets with a shipped classifier, e.g. `["digits", "mnist"]`."""
    return sorted(
        entry.name[: -len(".json")] for entry in _weights().iterdir() if entry.name.endswith(".json")
    )


def classifier_record(name: str) -> dict[str, Any]:
    """The JSON record of classifier `name`: config, training recipe, command and accuracies."""
    entry = _weights().joinpath(f"{name}.json")
    if not entry.is_file():
        raise UsageError(
            f"no shipped classifier for dataset {name!r}; have: {', '.join(shipped_classifiers())}"
        )
    record = json.loads(entry.read_text())
    if record.get("format") != FORMAT:
        raise UsageError(f"{name}.json is not a {FORMAT} record")
    return record


def load_classifier(name: str) -> DigitClassifier:
    """The shipped classifier of dataset `name` in eval mode on the CPU (float32, weights-only load)."""
    from safetensors.torch import load

    record = classifier_record(name)
    network = DigitClassifier(ClassifierConfig.from_dict(record["config"]))
    state = load(_weights().joinpath(f"{name}.safetensors").read_bytes())
    network.load_state_dict(state)
    return network.eval().requires_grad_(False)

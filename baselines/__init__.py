"""
The paper's Table 1 baselines that are not SSMLoRA itself: QLoRA (qlora.py: NF4 base, LoRA on top) and MixLoRA
(mixlora.py: top-k routed LoRA experts on the FFN). The core (ssmlora.py) never imports this package: whoever builds
a model from settings (train.py's model building, the adapter file loader) calls add_adapters here, which adds any
method, these two included.
"""
from ssmlora import add_adapters as add_core_adapters

from .mixlora import add_mixlora, aux_loss
from .qlora import add_qlora

BASELINES = {"qlora": add_qlora, "mixlora": add_mixlora}


def add_adapters(model, adapters):
    """ssmlora.add_adapters for every method, the baselines here included."""
    add = BASELINES.get(adapters.method, add_core_adapters)
    return add(model, adapters)

"""How the prompting model's weights are loaded on a GPU: in the run's 16-bit precision, or as a 4-bit (NF4) copy
where `quantization` asks for one, or where `quantization: auto` finds that 16 bits do not fit the card (the memory
preflight's own plan, nlilab.models.memory.plan_experiment, computed again here for the GPU the run got).

The choice and its reason go into the experiment's config (`prompt_weights`), which metrics.json records."""

from __future__ import annotations

from nlilab.errors import NlilabError
from nlilab.methods.qlora import DTYPES, nf4_config
from nlilab.models.memory import gpu_memory_bytes, plan_experiment, read_config


def choose_weights(config: dict, path: str, device: str, card: int | None = None) -> dict:
    """{'weights': 'nf4' or the precision, 'why': ...} for the model folder at `path`."""
    asked = config.get("quantization", "none")
    if device != "cuda" or asked == "none":
        why = "set in the profile" if asked == "none" else "4-bit weights need a GPU; the CPU runs the precision"
        return {"weights": config["precision"], "requested": asked, "why": why}
    card = gpu_memory_bytes() if card is None else card
    plan = plan_experiment(config, card, read_config(path))
    if plan.problem:
        raise NlilabError(plan.problem)
    weights = plan.weights or config["precision"]
    why = plan.note or ("set in the profile" if asked == "nf4" else f"auto: {plan.estimate.describe()} fits the "
                                                                  f"GPU's {card / 2**30:.1f} GiB in 16 bits")
    return {"weights": weights, "requested": asked, "why": why}


def load_kwargs(config: dict, path: str, device: str) -> dict:
    """from_pretrained's arguments for the chosen weights; records the choice in config['prompt_weights']."""
    import torch

    choice = config["prompt_weights"] = choose_weights(config, path, device)
    dtype = getattr(torch, DTYPES[config["precision"]])
    if choice["weights"] != "nf4":
        return {"dtype": dtype}
    print(f"nlilab: {choice['why']}", flush=True)
    # NF4 with double quantization, computing in the run's precision; the output layer stays in 16 bits
    # (bitsandbytes leaves lm_head unquantized by default)
    quant = nf4_config(config["precision"])
    return {"dtype": dtype, "quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}

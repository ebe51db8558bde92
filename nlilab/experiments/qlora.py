"""The QLoRA classifier experiment: train each seed of a 4-bit decoder classifier, write metrics.json."""

from __future__ import annotations

from nlilab.errors import NlilabError
from nlilab.methods.qlora import (
    build,
    load_tokenizer,
    plan_quantization,
    sixteen_bit_bytes,
    tokenize,
)


# ============================================================================================ experiment
def method_label(adapter: str, applied: str) -> str:
    adapter = "LoRA" if adapter == "lora" else "bottleneck adapters"
    bits = {"nf4": "4-bit NF4", "int8": "8-bit", "none": "unquantized"}[applied]
    return f"classifier: {adapter}, {bits} base"


def footprint_record(notes: dict, path: str) -> dict:
    sixteen, params = sixteen_bit_bytes(path)
    loaded = notes["weights_bytes_loaded"]
    return {"weight_footprint_mb": {
        "loaded": loaded / 2**20, "bf16": sixteen / 2**20, "ratio": loaded / sixteen,
        "loaded_as": notes["quantization"], "embeddings_4bit": bool(notes.get("embeddings_4bit")),
        "how": "parameter + buffer bytes (+ bitsandbytes quantization scales) of the base classifier as loaded; "
               "bf16: the same architecture built on the meta device in bfloat16"},
        "base_params": int(params)}


def run(config: dict) -> dict:
    """Train every seed, write metrics.json (same fields as the encoder experiments, plus quantization and
    footprint), return it."""
    from transformers import set_seed

    from nlilab.data.nli import load_nli
    from nlilab.models.resolve import resolve_model
    from nlilab.params import experiment_seeds
    from nlilab.results import (
        atomic_write_json,
        experiment_dir,
        read_json,
        write_metrics,
    )
    from nlilab.training.trainer import (
        RUN_FILE,
        fit_and_evaluate,
        resolve_device,
        summarize,
    )

    device = resolve_device(config)
    resolved = resolve_model(config["model"], config.get("revision"))
    quant = plan_quantization(config, device)
    data = load_nli(config["data"], seed=config["seed"])
    tokenizer = load_tokenizer(resolved.path)
    tokenized = tokenize(data, tokenizer, config["input_template"], config["train"]["max_length"])
    out_dir = experiment_dir(config)
    keep = config.get("keep_models", "first")
    runs = []
    for index, seed in enumerate(experiment_seeds(config)):
        run_dir = out_dir / f"seed_{seed}"
        finished = read_json(run_dir / RUN_FILE)
        if finished is not None:  # don't load and quantize a model only to read a finished result back
            runs.append(finished)
            continue
        set_seed(seed)  # before building: the head's and the adapters' initialisation depend on it
        built = build(config, resolved.path, tokenizer, quant, device)
        run = fit_and_evaluate(built.model, tokenizer, tokenized, data, config, seed, run_dir, save=built.save,
                               keep_model=keep == "all" or (keep == "first" and index == 0), window=index == 0)
        run["method_notes"] = built.notes
        atomic_write_json(run_dir / RUN_FILE, run)
        runs.append(run)
    metrics = summarize(runs, data)
    notes = next((r["method_notes"] for r in runs if r.get("method_notes")), None)
    if notes is None:  # only if a crash fell between run.json's two writes
        raise NlilabError(f"{out_dir}: the finished seeds lack their method notes; delete the seed_* folders "
                          "and run again")
    metrics.update(footprint_record(notes, resolved.path))
    if metrics.get("cost"):  # beside the static footprint: what training needs, after PEFT's up-casts
        metrics["cost"]["training_peak_mb"] = metrics["cost"]["gpu_peak_mb"] or metrics["cost"]["peak_rss_mb"]
    if notes.get("total_params_logical"):  # count_parameters sees packed 4-bit tensors at half their size
        metrics["total_params"] = notes["total_params_logical"]
        metrics["trainable_share"] = metrics["trainable_params"] / notes["total_params_logical"]
    metrics.update(model=config["model"], model_path=resolved.path, model_provenance=resolved.provenance,
                   method=f"qlora_{config['adapter']}",
                   method_label=method_label(config["adapter"], notes["quantization"]), method_notes=notes,
                   adapter=config["adapter"],
                   **{k: notes[k] for k in ("quantization", "quantization_requested", "quantization_note",
                                            "compute_dtype")},
                   data_source=data.source, data_fingerprint=data.fingerprint,
                   dropped_unlabeled=data.dropped_unlabeled,
                   data_sizes={split: len(ds) for split, ds in data.splits.items()})
    write_metrics(config, metrics)
    return metrics

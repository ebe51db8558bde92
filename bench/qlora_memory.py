"""QLoRA memory: the base classifier's weights as loaded in 4-bit against the same architecture in 16-bit.

Loads the model the way the QLoRA notebook does (nlilab.methods.qlora.load_base: NF4 linear layers, double
quantization, the new head unquantized), once with the embedding table left in 16 bits (the QLoRA recipe) and
once with it in NF4 too (`quantize_embeddings: true`), and prints bytes and ratios. The 16-bit reference is the
same classifier built on the meta device in bfloat16 (nlilab.methods.qlora.sixteen_bit_bytes). CPU is enough.

    .venv/bin/python bench/qlora_memory.py [--model smollm2]

Writes bench/out/qlora_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlilab.methods import qlora
from nlilab.models.resolve import resolve_model  # noqa: E402

MB = 2**20


def measure(path: str, device: str, compute_dtype: str) -> dict:
    tokenizer = qlora.load_tokenizer(path)
    sixteen, params = qlora.sixteen_bit_bytes(path)
    out = {"model": path, "parameters": params, "bf16_mb": sixteen / MB, "loaded": {}}
    for embeddings in (False, True):
        quant = qlora.Quantization("nf4", "nf4", None, compute_dtype, True, embeddings)
        model = qlora.load_base(path, tokenizer, quant, device)
        loaded = qlora.weight_bytes(model)
        table = model.get_input_embeddings()
        table_bytes = qlora.weight_bytes(table)
        name = "linear layers + embedding table in NF4" if embeddings else "linear layers in NF4 (QLoRA recipe)"
        out["loaded"][name] = {"mb": loaded / MB, "ratio": loaded / sixteen, "embedding_table_mb": table_bytes / MB,
                               "embedding_share_of_loaded": table_bytes / loaded}
        del model
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="alias, local folder or cached hub id (default smollm2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    args = parser.parse_args(argv)
    result = measure(resolve_model(args.model).path, args.device, args.compute_dtype)
    print(f"{result['model']}: {result['parameters'] / 1e6:.1f}M parameters, {result['bf16_mb']:.1f} MB in bf16")
    for name, row in result["loaded"].items():
        print(f"  {name:<40} {row['mb']:7.1f} MB  ratio {row['ratio']:.3f}  "
              f"(embedding table {row['embedding_table_mb']:.1f} MB, {100 * row['embedding_share_of_loaded']:.0f}% of it)")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "qlora_memory.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each process of a multi-process experiment runs: `python -m nlilab.experiments.launched CONFIG_FILE`,
started by `accelerate launch` (nlilab.training.distributed.launch) with the experiment's config as a JSON file.

Every process runs the experiment's kind as one process would; the Trainer trains them together, and rank 0 alone
writes the results. A user's error is printed as the command line prints it, and the process exits 2.
"""

from __future__ import annotations

import sys

from nlilab.errors import NlilabError
from nlilab.experiments.encoder import Encoder
from nlilab.experiments.qlora import QLoRA
from nlilab.results import read_json
from nlilab.training.distributed import finish, rank

KINDS = {"encoder": Encoder, "qlora": QLoRA}


def main(argv: list[str] | None = None) -> int:
    (config_file,) = sys.argv[1:] if argv is None else argv
    config = read_json(config_file)
    try:
        KINDS[config["kind"]](config).run()
    except NlilabError as exc:
        print(f"nlilab: error (rank {rank()}): {exc}", file=sys.stderr, flush=True)
        return 2
    finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

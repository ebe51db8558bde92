"""One experiment trained by several processes, on one machine's GPUs or on several machines: data-parallel.

With `processes: N` above 1, the experiment's driver (the notebook's kernel) does not train: it starts
`accelerate launch --multi_gpu --num_processes N [the launch: block] -m <entry> <config file>`, streams what the
processes print, and reads the metrics.json that rank 0 wrote. Each process (a rank) runs the experiment as one
process would, with the HF Trainer, which trains under DistributedDataParallel when torchrun started it: the
gradients of every rank's share of a batch are averaged before each optimizer step. Evaluation is scored by every
rank on its shard of the rows and gathered (nlilab.training.trainer.predict_rows). Only rank 0 writes.

A subprocess, not accelerate's `notebook_launcher`: that one forks the kernel, and a kernel that has touched CUDA
(the QLoRA notebook checks bitsandbytes on the GPU before it runs) cannot be forked into CUDA processes.

Here: who this process is (`world_size`, `rank`, `is_main`), what a rank needs set differently (`rank_device`,
`per_process_batch`, `trainer_settings`), the launch itself (`launch`) and its record in metrics.json
(`launch_record`).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from nlilab.errors import NlilabError
from nlilab.results import METRICS, experiment_dir, read_json

LAUNCH_ENV = "NLILAB_LAUNCH_ID"  # set in every rank's environment: it marks a rank, and names its launch
LAUNCH_LOG = "launch.log"  # in the experiment's folder: everything the ranks printed
TAIL_LINES = 15  # of the ranks' output, in the error a failed launch raises


# ------------------------------------------------------------------------------------------------ this process
def in_rank() -> bool:
    """Whether this process is one of the ranks that nlilab launched (a rank trains; it never launches)."""
    return LAUNCH_ENV in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0, or the one process of an ordinary run: the only one that writes results."""
    return rank() == 0


def launches(config: dict) -> bool:
    """Whether this experiment's driver launches processes (rather than training in this one)."""
    return config.get("processes", 1) > 1 and not in_rank()


def rank_device(device: str) -> str:
    """The device this rank loads its model on: its own GPU (LOCAL_RANK) where the experiment uses GPUs. QLoRA
    places its 4-bit copy there itself (`device_map={"": "cuda:<local rank>"}`); `device_map="auto"` would
    spread one copy over every GPU and silently turn data parallelism into model parallelism."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def per_process_batch(batch_size: int) -> int:
    """Each rank's share of an optimizer step's `batch_size` rows: N processes take the same steps over the same
    number of rows as one, so that `train.batch_size` (and with it the learning rate's meaning) does not change
    with the number of processes."""
    processes = world_size()
    if batch_size % processes:
        raise NlilabError(f"train.batch_size {batch_size} does not split over {processes} processes; "
                          "set it to a multiple of processes")
    return batch_size // processes


def trainer_settings(device: str, gradient_checkpointing: bool = False) -> dict:
    """TrainingArguments a rank needs beyond one process's (none for one process): gloo on the CPU (the Trainer
    would ask for MPI or oneCCL); unused parameters looked for, since a frozen base or a pooler the mean pooling
    skips leaves parameters without gradients, except under gradient checkpointing, which re-runs the forward and
    would mark them twice."""
    if world_size() == 1:
        return {}
    return {"ddp_backend": "gloo" if device == "cpu" else None,
            "ddp_find_unused_parameters": not gradient_checkpointing}


def finish() -> None:
    """A rank's last step: wait for every other (rank 0 has written metrics.json by then, so no machine's
    launcher returns before it is there), then leave the process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch_record(config: dict) -> dict:
    """metrics.json's `launch`: how many processes trained the experiment, on how many machines, over which
    backend, and the id of the launch that wrote it (None in one process)."""
    processes = world_size()
    backend = None
    if processes > 1:
        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_initialized() else None
    machines = processes // int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    how = ("one process trained and scored it" if processes == 1 else
           f"{processes} processes on {machines} machine(s) trained it data-parallel, each on "
           f"{config['train']['batch_size'] // processes} of every step's {config['train']['batch_size']} rows, "
           "and scored it on shards of the rows gathered into one prediction per row; times and memory are "
           "rank 0's")
    return {"processes": processes, "machines": machines, "backend": backend,
            "launch_id": os.environ.get(LAUNCH_ENV), "how": how}


# ------------------------------------------------------------------------------------------------ launching
def launch_command(config: dict, entry: str, config_file: Path) -> list[str]:
    """`accelerate launch` (as `python -m accelerate.commands.launch`: the driver's own environment, whatever is
    on PATH) of `python -m entry config_file`. `--multi_gpu` picks accelerate's torchrun launcher on a machine
    without GPUs too: its other launcher starts a single process there (or wants MPI), while torchrun starts N,
    and each rank's Trainer then sets up gloo (trainer_settings)."""
    launch = config["launch"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(config["processes"]), "--num_machines", str(launch["num_machines"]),
               "--machine_rank", str(launch["machine_rank"]),
               # 0: a free port; precision and compilation are the Trainer's, from the profile
               "--main_process_port", str(launch["main_process_port"] or 0),
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    if launch["main_process_ip"]:
        command += ["--main_process_ip", launch["main_process_ip"]]
    if launch["same_network"]:
        command.append("--same_network")
    return [*command, *launch["extra_args"], "-m", entry, str(config_file)]


def _local_processes(config: dict) -> int:
    return config["processes"] // config["launch"]["num_machines"]


def check_devices(config: dict, device: str) -> None:
    """Before anything starts: on GPUs, one GPU per process of this machine."""
    if device != "cuda":
        return
    import torch

    needed, visible = _local_processes(config), torch.cuda.device_count()
    if visible < needed:
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise NlilabError(
            f"experiment '{config['name']}': {config['processes']} processes need {needed} GPU(s) on this machine, "
            f"one each; it sees {visible}" + (f" (CUDA_VISIBLE_DEVICES={listed})" if listed is not None else "")
            + f". Lower processes, or run it alone (`nlilab run --only {config['name']} --jobs 1`), which leaves "
            "it every GPU")


def _rank_environment(launch_id: str, threads_each: int) -> dict:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the ranks run this nlilab, not another install
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env[LAUNCH_ENV] = launch_id
    env["PYTHONUNBUFFERED"] = "1"  # lines as they are printed, not when a buffer fills
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the driver's share of the cores, split between ranks
        env[var] = str(threads_each)
    return env


def _threads_each(config: dict) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, int(os.environ.get("OMP_NUM_THREADS") or cores) // _local_processes(config))


def _stream(command: list[str], env: dict, log_path: Path) -> tuple[int, list[str]]:
    """Run the launch, its output copied line by line to this process's stdout (the notebook's cell, so the
    runner's log) and to `log_path`; (exit status, last lines). Interrupted, it stops the ranks first."""
    tail = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, errors="replace")
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                tail.append(line.rstrip("\n"))
            return process.wait(), list(tail)
        finally:
            if process.poll() is None:  # torchrun passes the signal on to its ranks
                process.terminate()
                process.wait()


def launch(config: dict, entry: str, device: str) -> dict:
    """Train the experiment in `config['processes']` processes, each running `python -m entry <config file>`;
    return the metrics.json that rank 0 wrote. A failed launch is an NlilabError naming the experiment, with
    the ranks' last lines and the log that holds all of them."""
    check_devices(config, device)
    out = experiment_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    launch_id = uuid.uuid4().hex
    config_file = out / f".launch-{launch_id}.json"  # a name of its own: each machine's driver writes one
    config_file.write_text(json.dumps(config), encoding="utf-8")
    command = launch_command(config, entry, config_file)
    print(f"[{config['name']}] {config['processes']} processes: {' '.join(command[1:])}", flush=True)
    log_path = out / LAUNCH_LOG
    try:
        status, tail = _stream(command, _rank_environment(launch_id, _threads_each(config)), log_path)
    finally:
        config_file.unlink(missing_ok=True)
    if status != 0:
        raise NlilabError(f"experiment '{config['name']}': its {config['processes']} processes failed (accelerate "
                          f"launch exit status {status}); all they printed is in {log_path}; the last lines:\n"
                          + "\n".join(tail))
    metrics = read_json(out / METRICS)
    # On one machine rank 0 is this launch's, so its metrics.json carries this launch's id. Across machines rank 0
    # may be another machine's driver's: the ranks' clean exit says that it wrote (they wait for it, `finish`).
    ours = config["launch"]["num_machines"] > 1 or (metrics or {}).get("launch", {}).get("launch_id") == launch_id
    if not metrics or not ours:
        raise NlilabError(f"experiment '{config['name']}': its processes ended without rank 0 writing "
                          f"{out / METRICS} (on several machines, the results folder must be one that every "
                          f"machine shares); see {log_path}")
    return metrics

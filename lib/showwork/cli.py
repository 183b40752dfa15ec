"""Command-line wiring shared by the job entrypoints: config files in, a Bus out."""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import sys

from showwork import config as config_lib
from showwork import errors
from showwork import log as log_lib
from showwork import xla_cache
from showwork.bus import Bus


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="recipe YAML then tier YAML (later files override earlier)")
    p.add_argument("--root", default=os.environ.get("SHOWWORK_ROOT", "runs"),
                   help="bus root holding runs: a directory or gs://bucket/prefix (env SHOWWORK_ROOT)")
    p.add_argument("--run-id", default=os.environ.get("SHOWWORK_RUN_ID"),
                   help="names this run's directory under the root (env SHOWWORK_RUN_ID; default: the recipe name)")
    return p


class Placement(enum.Enum):
    """Where a job's pods run, which decides the devices it may use.

    The manifests place data-prep and the report on CPU nodes even in TPU
    tiers, eval shards on single-host pods, and training on the whole slice.
    """

    CPU = "cpu"  # no accelerator and no mesh: data-prep, report
    ONE_HOST = "one-host"  # this pod's devices only, `tier.eval_mesh`: eval shards
    SLICE = "slice"  # every host of the tier, `tier.mesh`: SFT, GRPO, self-teach, local pipeline


def setup(args: argparse.Namespace, placement: Placement = Placement.SLICE):
    """Load config, build the mesh the job's placement gives it and open the bus,
    or exit with one clear line.

    Returns (config, bus, mesh); mesh is None for CPU jobs.
    """
    log_lib.configure()
    with ending():
        cfg = config_lib.load(*args.configs)
        mesh = None if placement is Placement.CPU else _mesh(cfg, args, placement)
        bus = Bus(f"{args.root.rstrip('/')}/{args.run_id or cfg.recipe}")
    log_lib.get("showwork").info("config loaded", recipe=cfg.recipe, files=list(cfg.sources), run=bus.root)
    return cfg, bus, mesh


def _mesh(cfg, args, placement: Placement):
    """The mesh of this job's placement; a ConfigError when this machine has fewer devices."""
    import jax

    from showwork.model import meshes

    xla_cache.enable()
    if placement is Placement.SLICE and cfg.tier.hosts > 1:
        # Multi-host TPU slices (JobSet, one pod per host): every process joins
        # one JAX runtime before any device is touched.
        jax.distributed.initialize(**_local_cluster())
    key, shape = ("mesh", cfg.tier.mesh) if placement is Placement.SLICE else (
        "eval_mesh" if cfg.tier.eval_mesh else "mesh", cfg.tier.mesh_for_eval())
    try:
        return meshes.tier_mesh(shape)
    except ValueError as err:  # more devices than this job sees: before any work starts
        raise config_lib.ConfigError(f"{args.configs[-1]}: tier.{key}.shape: {err}; pick the tier that matches "
                                     "the node pool") from None


def _local_cluster() -> dict:
    """jax.distributed arguments for hosts simulated on one machine (the recipe matrix in CI):
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Empty on a TPU slice, where
    JAX finds its hosts by itself."""
    if "JAX_NUM_PROCESSES" not in os.environ:
        return {}
    return {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
            "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
            "process_id": int(os.environ["JAX_PROCESS_ID"])}


def run(doc: str, main, argv: list[str] | None = None, add_arguments=None, placement: Placement = Placement.SLICE):
    """Parse argv, load config, call `main(cfg, bus, args)`; end as showwork.errors' table says.

    `add_arguments(parser)` lets a job add its own flags; `placement` says
    where its pods run (see Placement).
    """
    p = parser(doc)
    if add_arguments:
        add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    cfg, bus, mesh = setup(args, placement)
    with ending():
        if mesh is None:
            return main(cfg, bus, args)
        import jax

        try:
            # Every array the job creates lives on the job's mesh: the loaders
            # shard weights FSDP x TP by tunix's annotations, activations follow.
            with jax.set_mesh(mesh):
                return main(cfg, bus, args)
        finally:
            # What the job paid in compilation, and what the persistent cache saved it.
            log_lib.get("showwork").info("xla programs", **xla_cache.counts().as_dict(),
                                         cache=jax.config.jax_compilation_cache_dir)


def absent(cfg, section: str, logger) -> bool:
    """True (and one log line) when the recipe has no `section`: the pipeline JobSet runs every
    training job for every recipe, and a job whose stage the recipe lacks ends at once with 0, so any
    recipe runs in any pipeline overlay of its tier (sft-full has no GRPO, trajectory no SFT)."""
    if getattr(cfg, section) is not None:
        return False
    logger.info("skipped: the recipe has no such stage", recipe=cfg.recipe, section=section)
    return True


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error a user can cause (showwork.errors), None for a bug."""
    from showwork.train.loop import Preempted

    if isinstance(err, Preempted):
        return errors.EXIT_PREEMPTED
    if isinstance(err, errors.UsageError):
        return errors.EXIT_USAGE
    if isinstance(err, (errors.RunError, FileNotFoundError)):
        return errors.EXIT_ERROR
    return None


@contextlib.contextmanager
def ending():
    """Turn the errors a user can cause into one line and their exit code; a bug keeps its traceback.

    Preempted (SIGTERM, checkpoint saved) exits EXIT_PREEMPTED: run the same command again to continue.
    """
    try:
        yield
    except Exception as err:
        code = exit_code(err)
        if code is None:  # a bug: its traceback goes to the log (JSON in a pod) and to stderr
            log_lib.get("showwork").exception("unexpected error", error=type(err).__name__)
            raise
        logger = log_lib.get("showwork")
        if code == errors.EXIT_PREEMPTED:
            logger.warning("preempted; checkpoint saved, exiting for a restart", detail=str(err),
                           exit_code=code)
        else:
            logger.error(str(err), error=type(err).__name__, exit_code=code)
            prefix = "config error" if isinstance(err, config_lib.ConfigError) else "error"
            print(f"{prefix}: {err}", file=sys.stderr)
        raise SystemExit(code) from None
